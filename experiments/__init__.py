"""The paper's experiments on your data: the comparison (section 5) and the demo. They orchestrate both sides,
`pipelines` (prepare, views of other t*, full histories) and `twots` (train, evaluate, track)."""
