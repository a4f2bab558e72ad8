"""The data contract (Delta table names and columns, Spark-free) and the Delta read/write helpers."""
