"""BentoML Recommender service: a thin shell over causalrec.serving.

Serve the built bento with `bentoml serve causalrec:latest`, or from the source tree with
`bentoml serve bentos.service:Recommender` (BENTOML_HOME pointing at the project store).
"""
from __future__ import annotations

import sys
from pathlib import Path

# The bento ships the library sources under src/ (see bentofile.yaml `include`).
_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

import bentoml  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from causalrec.serving.core import RecommenderCore  # noqa: E402


class RecommendRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=256)
    k: int = Field(10, ge=1, le=1000)
    exclude: list[str] = Field(default_factory=list, max_length=10_000)


@bentoml.service(name="causalrec-recommender", traffic={"timeout": 30})
class Recommender:
    bundle = bentoml.models.BentoModel("causalrec-recommender:latest")

    def __init__(self) -> None:
        self.core = RecommenderCore(self.bundle.path)

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    def recommend(self, **request) -> dict:
        req = RecommendRequest(**request)
        return self.core.recommend(req.user_id, req.k, req.exclude)

    @bentoml.api(route="/model_info")
    def model_info(self) -> dict:
        return self.core.manifest
