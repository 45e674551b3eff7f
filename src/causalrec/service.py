"""BentoML services: a thin shell over causalrec.serving (all logic lives in the library).

    bentoml serve causalrec-bento:<version>            # a built bento: the registry's champion (make serve)
    bentoml serve causalrec.service:Recommender --arg recommender=causalrec-recommender:<tag> \
        --arg encoder=causalrec-encoder:<tag>           # from the installed package

A bento holds this package at the root of its sources (bentos/bentofile.yaml, built with src/ as the
context), which BentoML puts first on the import path when it serves the bento: a bento serves the
library code it was built with, whatever version is installed beside it.

Which models a bento serves is fixed when it is built: `causalrec package` passes the candidate's
model tags as bento arguments (`bentoml build --arg`), which BentoML stores in the bento and restores
when it serves it; nothing resolves `:latest`.

Environment: CAUSALREC_API_KEY (required for POST /feedback and /items), CAUSALREC_PSEUDONYM_KEY
(keyed hash of user ids in logs and stored feedback; default: pseudonym.key beside the feedback log), CAUSALREC_FEEDBACK_LOG (default from params.yaml serve.feedback_log),
CAUSALREC_CATALOGUE (items added through POST /items, SQLite; default serve.catalogue),
CAUSALREC_REGISTRY (the registry whose model versions feedback may name; default: the project's),
CAUSALREC_INT8_ENCODER=1 (dynamic int8 encoder on CPU), CAUSALREC_LOG_LEVEL (default INFO),
CAUSALREC_MAX_REQUEST_BYTES (default 1 MiB; larger POST bodies get 413, non-JSON ones 415).
Workers, timeouts and the rest of BentoML's runtime settings: BentoML's own configuration, read when it
serves (a BENTOML_CONFIG file, or BENTOML_CONFIG_OVERRIDES, e.g.
'{"services": {"causalrec-recommender": {"workers": 2}}}'), over the defaults in the decorators below.
"""
from __future__ import annotations

import logging
import os
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound
from pydantic import BaseModel, BeforeValidator, Field

from causalrec.data.rules import ID_PATTERN
from causalrec.data.schema import OUTCOME_VALUES
from causalrec.io import die_with_parent
from causalrec.logs import configure as configure_logging
from causalrec.logs import one_line_client_errors
from causalrec.serving.catalogue import CatalogueStore, Conflict
from causalrec.serving.core import NotFound as UnknownId
from causalrec.serving.core import RecommenderCore
from causalrec.serving.feedback import FeedbackLog
from causalrec.serving.launch import server_pid
from causalrec.serving.limits import ErrorContract, RequestLimits
from causalrec.serving.mixture import with_challenger
from causalrec.serving.privacy import api_key_matches, pseudonym_key

class Pins(BaseModel):
    """The bento arguments: the model store tags this bento serves (set by `causalrec package`)."""
    recommender: str = Field(pattern=r"^causalrec-recommender:[A-Za-z0-9_.-]+$")
    encoder: str = Field(pattern=r"^causalrec-encoder:[A-Za-z0-9_.-]+$")


PINS = bentoml.use_arguments(Pins)
Id = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(min_length=1, max_length=10_000)]


# OpenAPI 3.0 has no numeric exclusiveMinimum: the same rule, written the 3.0 way in the schema.
# Numbers are strict: "0.5" or 1.5 for an integer is a 400, as the schema says, not silently coerced.
Propensity = Annotated[float, Field(gt=0, le=1, strict=True, json_schema_extra={"minimum": 0, "exclusiveMinimum": True})]
# the contract's binary outcome (data.schema.OUTCOME_VALUES); the rule book says so again (data.rules)
Outcome = Annotated[float, Field(ge=0, le=1, strict=True, json_schema_extra={"enum": sorted(int(v) for v in OUTCOME_VALUES)})]
# ids stored as sent: the rule book's grammar (no '@', no spaces), in the published schema too
StoredId = Annotated[str, Field(pattern=f"^{ID_PATTERN.pattern}$", max_length=256)]


def _iso_text(value):
    """A timestamp must be ISO 8601 text: a number (unix time? milliseconds?) is ambiguous, refused."""
    if not isinstance(value, str):
        raise ValueError("timestamp must be an ISO 8601 string, e.g. 2026-01-02T03:04:05Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_iso_text),
                      Field(description="ISO 8601 string; between 1990-01-01 and now + 1 day (UTC); no zone means UTC")]


class Unauthorized(BentoMLException):
    error_code = HTTPStatus.UNAUTHORIZED


class AlreadyExists(BentoMLException):
    error_code = HTTPStatus.CONFLICT


def _require_key(ctx: bentoml.Context) -> None:
    if not api_key_matches(ctx.request.headers.get("x-api-key"), os.environ.get("CAUSALREC_API_KEY")):
        raise Unauthorized("missing or wrong x-api-key (write endpoints need the CAUSALREC_API_KEY configured on the server)")


@bentoml.service(name="causalrec-encoder", traffic={"timeout": 30})
class Encoder:
    """Text -> L2-normalised embedding with the pipeline's own encoder; requests are batched adaptively."""

    weights = bentoml.models.BentoModel(PINS.encoder)

    def __init__(self) -> None:
        die_with_parent(server_pid())  # no orphan worker holds the port after a `kill -9` of the server
        import json

        from causalrec.text import TextEncoder

        spec = json.loads((Path(self.weights.path) / "encoder.json").read_text())
        int8 = os.environ.get("CAUSALREC_INT8_ENCODER", "1" if spec.get("int8") else "0") == "1"
        model_path = None if spec["source"].startswith("packaged:") else Path(self.weights.path) / "model"
        self.encoder = TextEncoder(model_path, max_length=spec.get("max_length", 128), quantize_int8=int8,
                                   progress=False).load()

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=20)
    def embed(self, texts: list[str]) -> np.ndarray:
        return self.encoder.embed(texts)


@bentoml.service(name="causalrec-recommender", traffic={"timeout": 30}, workers=1)
class Recommender:
    bundle = bentoml.models.BentoModel(PINS.recommender)
    encoder = bentoml.depends(Encoder)

    def __init__(self) -> None:
        die_with_parent(server_pid())
        configure_logging()  # JSON lines at $CAUSALREC_LOG_LEVEL, like the CLI
        one_line_client_errors()  # a 4xx is one line, never a traceback with the request in it
        manifest = RecommenderCore.read_manifest(self.bundle.path)
        catalogue = CatalogueStore(os.environ.get("CAUSALREC_CATALOGUE", manifest["serve"]["catalogue"]))
        log_path = os.environ.get("CAUSALREC_FEEDBACK_LOG", manifest["serve"]["feedback_log"])
        # Feedback stores pseudonyms; the key sits beside the log, shared with every worker and the exporter.
        self.core = RecommenderCore(self.bundle.path, catalogue=catalogue, pseudonym_key=pseudonym_key(Path(log_path).parent),
                                    version=PINS.recommender, registry=os.environ.get("CAUSALREC_REGISTRY"),
                                    feedback_log=log_path)  # followed for online updates (serve.online)
        self.feedback_log = FeedbackLog(log_path, max_bytes=int(self.core.config["feedback_max_bytes"]))
        # serve.bandit: the registry's waiting challenger shares the traffic (from this machine's model store)
        registry = os.environ.get("CAUSALREC_REGISTRY") or self.core.manifest.get("registry")
        try:
            self.mixture = with_challenger(self.core, registry, lambda tag: bentoml.models.get(tag).path, log_path)
        except (BentoMLException, OSError, ValueError) as exc:
            logging.getLogger(__name__).warning("serve.bandit: the challenger cannot be loaded here (%s); the champion "
                                                "serves alone", exc)
            self.mixture = None
        self.k_max = int(self.core.config["k_max"])

    @bentoml.api(route="/recommend")
    async def recommend(self, user_id: Id,
                        k: Annotated[int, Field(ge=1, le=10_000, strict=True, description="at most serve.k_max items are returned")] = 10,
                        exclude: Annotated[list[Id], Field(max_length=1000)] = [],  # noqa: B006
                        controls: Annotated[int, Field(ge=0, le=1000, strict=True, description=(
                            "also name this many unshown items (drawn uniformly, with their inclusion probabilities "
                            "and the control_rate): report their outcomes with exposed = false"))] = 0) -> dict:
        return (self.mixture or self.core).recommend(user_id, min(k, self.k_max), exclude, controls=controls)

    @bentoml.api(route="/explain")
    def explain(self, user_id: Id, item_id: Id) -> dict:
        try:
            return self.core.explain(user_id, item_id)
        except UnknownId as exc:
            raise NotFound(str(exc)) from None

    @bentoml.api(route="/feedback")
    def feedback(self, event_id: StoredId, user_id: Id, item_id: Id, outcome: Outcome,
                 propensity: Propensity, timestamp: Timestamp, ctx: bentoml.Context,
                 position: Annotated[int, Field(ge=0, le=10_000, strict=True)] = 0,
                 policy: Annotated[str, Field(max_length=64, pattern=f"^({ID_PATTERN.pattern})?$")] = "",
                 request_id: Annotated[str, Field(max_length=64, pattern=f"^({ID_PATTERN.pattern})?$",
                                                  description="the /recommend answer's")] = "",
                 slate_size: Annotated[int, Field(ge=0, le=10_000, strict=True,
                                                  description="items in the served slate (0: unknown)")] = 0,
                 model_version: Annotated[str, Field(max_length=256, pattern=f"^({ID_PATTERN.pattern})?$",
                                                     description="the /recommend answer's (a model version the "
                                                     "registry knows); default: the version this server serves")] = "",
                 uniform: Annotated[bool, Field(strict=True, description="the /recommend answer's: the slate was "
                                                "drawn uniformly at random (the exploration share)")] = False,
                 exposed: Annotated[bool, Field(strict=True, description="false: the outcome of one of the answer's "
                                                "controls, an item the slate did not show")] = True,
                 control_rate: Annotated[Propensity, Field(description="the /recommend answer's control_rate "
                                                           "(for exposed = false)")] = 1.0) -> dict:
        _require_key(ctx)
        try:
            event = self.core.feedback_event(event_id, user_id, item_id, outcome, propensity, timestamp, position, policy,
                                             request_id, slate_size, model_version, uniform, exposed, control_rate)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        written = self.feedback_log.append(event)  # fsynced before we answer
        return {"event_id": event_id, "status": "logged" if written else "duplicate"}

    @bentoml.api(route="/items")
    async def items(self, title: Text, description: Text, ctx: bentoml.Context,
                    item_id: Annotated[str, Field(max_length=256, pattern=f"^({ID_PATTERN.pattern})?$")] = "") -> dict:
        _require_key(ctx)
        vector = np.asarray(await self.encoder.to_async.embed([f"{title}. {description}"]))[0]
        try:
            return self.core.add_item(title, description, vector, item_id or None)
        except Conflict as exc:
            raise AlreadyExists(str(exc)) from None
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None

    @bentoml.api(route="/model_info")
    def model_info(self) -> dict:
        # the exploration it serves with: serve.epsilon, or the boost after a drift alarm (exploration_boost)
        traffic = (None if self.mixture is None else  # serve.bandit: who shares the traffic, with what shares now
                   dict(zip(self.mixture.bandit.arms, self.mixture.bandit.shares.tolist())))
        return {**self.core.manifest, "catalogue_size": self.core.catalogue_size,
                "serving": {"policy": self.core.policy.kind, "epsilon": self.core.policy.epsilon, "traffic": traffic}}


# The public API: size and content type are checked before BentoML parses a body (413 / 415, never
# a 5xx); error bodies are one object, and the published document lists them. The Encoder is an
# internal dependency, called by BentoML's own client in its own formats.
ROUTES = frozenset({"/recommend", "/explain", "/feedback", "/items", "/model_info"})
Recommender.add_asgi_middleware(RequestLimits, routes=ROUTES)
Recommender.add_asgi_middleware(ErrorContract, routes=ROUTES, write_routes=frozenset({"/feedback", "/items"}))
