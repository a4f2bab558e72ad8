def test_delta_roundtrip_and_versions(spark, tmp_path):
    path = str(tmp_path / "t")
    spark.range(5).write.format("delta").save(path)
    spark.range(3).write.format("delta").mode("overwrite").save(path)
    assert spark.read.format("delta").load(path).count() == 3
    assert spark.read.format("delta").option("versionAsOf", 0).load(path).count() == 5
