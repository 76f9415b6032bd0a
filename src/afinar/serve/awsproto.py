"""The server side of AWS's rest-json protocol, driven by botocore's own service models.

botocore ships the exact shape of every Bedrock operation (`botocore/data/bedrock/*/
service-2.json.gz`): HTTP method and URI, where each input member travels (URI label, query
string, header, JSON body), types, required members, length/range limits, enums and patterns.
The client uses it to serialize requests and parse responses; here the same model parses and
validates requests and shapes responses, so the routes cannot drift from what boto3 sends and
expects. botocore has no server half, hence this module.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import cache
from urllib.parse import parse_qsl, unquote

from botocore.loaders import Loader
from botocore.model import OperationModel, ServiceModel, Shape

from afinar import jsonutil


class ApiError(Exception):
    """An error botocore turns into its modelled exception class (`code`)."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def validation(message: str) -> ApiError:
    return ApiError("ValidationException", message)


@cache
def service_model(name: str) -> ServiceModel:
    loader = Loader()
    return ServiceModel(loader.load_service_model(name, "service-2"), service_name=name)


@dataclass
class Route:
    operation: OperationModel
    method: str
    regex: re.Pattern
    labels: list[str]
    literal_chars: int  # more literal characters = more specific


def _compile(uri: str) -> tuple[re.Pattern, list[str], int]:
    path = uri.split("?", 1)[0]
    labels, parts, pos = [], [], 0
    for m in re.finditer(r"\{([^}]+)\}", path):
        parts.append(re.escape(path[pos:m.start()]))
        name = m.group(1)
        greedy = name.endswith("+")
        labels.append(name.rstrip("+"))
        parts.append("(.+)" if greedy else "([^/]+)")
        pos = m.end()
    parts.append(re.escape(path[pos:]))
    literal = len(re.sub(r"\{[^}]+\}", "", path))
    return re.compile("^" + "".join(parts) + "$"), labels, literal


class Router:
    """Matches (method, raw path) to an operation. Labels are matched on the raw, still
    percent-encoded path: botocore encodes '/' inside an ARN label as %2F."""

    def __init__(self, model: ServiceModel, operations: list[str]):
        self.model = model
        self.routes: list[Route] = []
        for name in operations:
            op = model.operation_model(name)
            regex, labels, lit = _compile(op.http["requestUri"])
            self.routes.append(Route(op, op.http["method"], regex, labels, lit))
        self.routes.sort(key=lambda r: -r.literal_chars)

    def match(self, method: str, raw_path: str) -> tuple[OperationModel, dict[str, str]] | None:
        allowed = False
        for r in self.routes:
            m = r.regex.match(raw_path)
            if not m:
                continue
            if r.method != method:
                allowed = True
                continue
            return r.operation, {k: unquote(v) for k, v in zip(r.labels, m.groups(),
                                                                strict=True)}
        if allowed:
            raise ApiError("ValidationException", f"method {method} is not allowed on {raw_path}",
                           405)
        return None


# -- request parsing and validation ----------------------------------------------------------

def parse_request(op: OperationModel, labels: dict[str, str], query: str, headers,
                  body: bytes) -> dict:
    shape = op.input_shape
    if shape is None:
        return {}
    params: dict = {}
    body_members = {}
    qs = parse_qsl(query, keep_blank_values=True)
    for name, member in shape.members.items():
        loc = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if loc == "uri":
            if wire in labels:
                params[name] = _from_text(member, labels[wire], name)
        elif loc == "querystring":
            vals = [v for k, v in qs if k == wire]
            if vals:
                if member.type_name == "list":
                    params[name] = [_from_text(member.member, v, name) for v in vals]
                else:
                    params[name] = _from_text(member, vals[-1], name)
        elif loc == "header":
            if wire in headers:
                params[name] = _from_text(member, headers[wire], name)
        else:
            body_members[wire] = name
    payload = shape.serialization.get("payload")
    if payload and shape.members[payload].type_name in ("blob", "string"):
        # the whole body is one member (InvokeModel's model-specific JSON, for instance)
        if body:
            params[payload] = body
        body = b""
    if body.strip():
        try:
            doc = jsonutil.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise validation(f"the request body is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise validation("the request body must be a JSON object")
        for key, value in doc.items():
            if key not in body_members:
                known = ", ".join(sorted(body_members)) or "none"
                raise validation(f"unknown field '{key}' in the request body; "
                                 f"{op.name} accepts: {known}")
            params[body_members[key]] = value
    validate(shape, params, "")
    return params


def _from_text(shape: Shape, text: str, field: str):
    t = shape.type_name
    try:
        if t in ("integer", "long"):
            return int(text)
        if t in ("float", "double"):
            return float(text)
        if t == "boolean":
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if t == "timestamp":
            return parse_timestamp(text)
    except ValueError:
        raise validation(f"'{field}' must be a {t}, got '{text}'") from None
    return text


def parse_timestamp(value) -> dt.datetime:
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    s = str(value)
    try:
        return dt.datetime.fromtimestamp(float(s), dt.UTC)
    except ValueError:
        pass
    d = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


# afinar also accepts file:// URIs and local paths (under configured roots) where Bedrock takes
# only s3://; the storage layer checks those.
LOCAL_STORAGE_SHAPES = {"S3Uri"}
# Fields that name a model. Every id afinar lists (registry ids such as `smollm2-135m-instruct`,
# aliases, custom model names, OpenAI `ft:` ids, their ARNs) is taken wherever a model is: the
# service resolves the id and answers an unknown one with the ids it has, so Bedrock's patterns
# (which allow only provider.model ids and 12-character ARN suffixes) are not applied to them.
MODEL_ID_SHAPES = frozenset({
    "BaseModelIdentifier", "EvaluationBedrockModelIdentifier", "EvaluatorModelIdentifier",
    "TeacherModelIdentifier", "GetFoundationModelIdentifier", "ModelIdentifier", "ModelId",
    "ModelArn", "CustomModelArn", "FoundationModelArn", "BedrockModelId", "BedrockModelArn",
    "BedrockEmbeddingModelArn", "ConversationalModelId", "InvokeModelIdentifier",
    "FoundationModelVersionIdentifier", "KnowledgeBaseModelIdentifier",
    "PromptModelIdentifier"})
# IAM roles are recorded, never assumed: any role ARN is taken, whatever its account digits
# (the course's own snippet has 9: `arn:aws:iam::123456789:role/BedrockRole`).
ROLE_ARN = r"arn:aws(-[^:]+)?:iam::[0-9]*:role/.+"


def _shape_pattern(shape: Shape) -> str | None:
    if shape.name in LOCAL_STORAGE_SHAPES or shape.name in MODEL_ID_SHAPES:
        return None
    if shape.name.endswith("RoleArn") or shape.name == "RoleArn":
        return ROLE_ARN
    return shape.metadata.get("pattern")


def validate(shape: Shape, value, path: str) -> None:
    """Type, required members, unknown members, lengths, ranges, enums and patterns, with the
    field's path in every message (`trainingDataConfig.s3Uri`)."""
    where = path or "request"
    t = shape.type_name
    if getattr(shape, "is_document_type", False):
        return  # free-form JSON (a filter value, metadata): checked where it is used
    if t == "structure":
        if not isinstance(value, dict):
            raise validation(f"'{where}' must be an object")
        for req in shape.required_members:
            if value.get(req) is None:
                raise validation(f"missing required field '{_join(path, req)}'")
        for k, v in value.items():
            if k not in shape.members:
                raise validation(f"unknown field '{_join(path, k)}'; expected one of: "
                                 f"{', '.join(shape.members)}")
            if v is not None:
                validate(shape.members[k], v, _join(path, k))
        if shape.metadata.get("union") and len([v for v in value.values() if v is not None]) > 1:
            raise validation(f"'{where}' takes exactly one of: {', '.join(shape.members)}")
        return
    if t == "list":
        if not isinstance(value, list):
            raise validation(f"'{where}' must be a list")
        _check_len(shape, len(value), where, "items")
        for i, v in enumerate(value):
            validate(shape.member, v, f"{where}[{i}]")
        return
    if t == "map":
        if not isinstance(value, dict):
            raise validation(f"'{where}' must be an object")
        for k, v in value.items():
            validate(shape.key, k, f"{where} key")
            validate(shape.value, v, f"{where}.{k}")
        return
    if t == "string":
        if not isinstance(value, str):
            raise validation(f"'{where}' must be a string, got {type(value).__name__}")
        _check_len(shape, len(value), where, "characters")
        enum = shape.metadata.get("enum")
        if enum and value not in enum:
            raise validation(f"'{where}' must be one of {', '.join(enum)}; got '{value}'")
        pattern = _shape_pattern(shape)
        if pattern and value and not _pattern(pattern).fullmatch(value):
            raise validation(f"'{where}' value '{value[:200]}' does not match the pattern "
                             f"{pattern}")
        return
    if t in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise validation(f"'{where}' must be an integer")
        lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise validation(f"'{where}' must be between {lo} and {hi}; got {value}")
        return
    if t in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise validation(f"'{where}' must be a number")
        return
    if t == "boolean":
        if not isinstance(value, bool):
            raise validation(f"'{where}' must be true or false")
        return
    if t == "timestamp":
        if not isinstance(value, dt.datetime):
            try:
                parse_timestamp(value)
            except (ValueError, TypeError):
                raise validation(f"'{where}' must be a timestamp") from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_len(shape: Shape, n: int, where: str, unit: str) -> None:
    lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
    if lo is not None and n < lo:
        raise validation(f"'{where}' must have at least {lo} {unit}; got {n}")
    if hi is not None and n > hi:
        raise validation(f"'{where}' must have at most {hi} {unit}; got {n}")


@cache
def _pattern(p: str) -> re.Pattern:
    return re.compile(p)


# -- responses -------------------------------------------------------------------------------

def serialize_output(op: OperationModel, data: dict) -> tuple[int, dict]:
    """The response status and JSON body: members the model does not know are dropped, None
    values omitted, timestamps written in ISO 8601."""
    status = op.http.get("responseCode", 200)
    shape = op.output_shape
    if shape is None:
        return status, {}
    return status, _shape_out(shape, data) or {}


def _shape_out(shape: Shape, value):
    if value is None:
        return None
    t = shape.type_name
    if getattr(shape, "is_document_type", False):  # free-form JSON (e.g. metadata values)
        return value
    if t == "structure":
        out = {}
        for k, member in shape.members.items():
            if member.serialization.get("location"):
                continue
            v = _shape_out(member, value.get(k))
            if v is not None:
                out[member.serialization.get("name", k)] = v
        return out
    if t == "list":
        return [_shape_out(shape.member, v) for v in value]
    if t == "map":
        return {k: _shape_out(shape.value, v) for k, v in value.items()}
    if t == "timestamp":
        d = value if isinstance(value, dt.datetime) else parse_timestamp(value)
        return d.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return value


def error_body(err: ApiError, model: ServiceModel) -> tuple[int, dict, dict]:
    status = err.status
    if status is None:
        try:
            status = model.shape_for(err.code).metadata["error"]["httpStatusCode"]
        except Exception:  # an error code the model does not list
            status = 400
    return status, {"message": err.message}, {"x-amzn-ErrorType": err.code}
