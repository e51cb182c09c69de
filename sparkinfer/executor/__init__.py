"""The executors' side of the inference stage, without Spark: what each task does with its chunk
rows (`infer_partition`), as a pipeline of small parts.

1. `read`: each chunk row becomes its windows (from its raster's plan); reader threads read the
   chunk's read window in one piece, ahead of the model, and cut it into its windows' pixels.
2. `predict`: windows batched by shape through the loaded model; each window's prediction is
   what is kept of its output (its core, or a chip's cell).
3. `merge`: a chunk's prediction made of its windows' (`ChunkPrediction`): cropped, blended or
   a chip classifier's cells. What a prediction is stays apart from how it is written.
4. `commit`: a finished chunk's prediction written as its files, with what each sink makes of
   it (tile counts, polygons, chip table), then committed, on a writer thread of the task.
5. `result`: one small `ChunkResult` row per chunk back to the driver; pixels never leave the
   executor.

The options choose the parts once per task (`partition.Parts`). The Spark shell around this is
`sparkinfer.stages.infer`.
"""

from sparkinfer.executor.partition import infer_partition
from sparkinfer.executor.result import CHUNK_RESULT_SCHEMA, ChunkResult, executor_name
from sparkinfer.executor.spec import StageSpec

__all__ = ["CHUNK_RESULT_SCHEMA", "ChunkResult", "StageSpec", "executor_name", "infer_partition"]
