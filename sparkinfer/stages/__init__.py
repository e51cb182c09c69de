"""The job's two Spark stages: inference (`infer`) and assembly (`assemble`)."""
