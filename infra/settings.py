"""Where things live, read from the environment. Credentials are never part of configs or logs."""
from __future__ import annotations

import os
import re
from typing import Any

DEFAULT_DATA_ROOT = "./rlt-data"
# names that hold credentials; "tokens"/"tokenizer" (counts, model parts) are not secrets
_SECRET_NAME = re.compile(r"(secret|password|passwd|credential|api[_-]?key|access[_-]?key|(^|[_-])token$|"
                          r"session[_-]?token|auth)", re.I)


def data_root(override: str | None = None) -> str:
    """``--data-root`` beats ``RLT_DATA_ROOT`` beats ``./rlt-data``. Local paths are made absolute."""
    root = override or os.environ.get("RLT_DATA_ROOT") or DEFAULT_DATA_ROOT
    if "://" not in root:
        root = os.path.abspath(root)
    return root.rstrip("/")


def is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


def s3_storage_options() -> dict[str, Any]:
    """s3fs options from the standard AWS environment variables (credentials stay in the env)."""
    opts: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    client_kwargs = {}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    return opts


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact(obj: Any) -> Any:
    """Copy of a config-like object with secret-looking keys replaced and credentials stripped from URLs."""
    if isinstance(obj, dict):
        return {k: ("***" if is_secret_name(str(k)) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return re.sub(r"(\w+://)[^/@\s]+:[^/@\s]+@", r"\1***@", obj)
    return obj


_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
               "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "HF_TOKEN",
               "OPENLINEAGE_API_KEY", "RAY_AUTH_TOKEN")


def redact_text(text: str) -> str:
    """Free text (exception messages) with URL credentials, ``?token=``-style query values and the values of
    secret environment variables masked."""
    text = re.sub(r"(\w+://)[^/@\s]+:[^/@\s]+@", r"\1***@", text or "")
    text = re.sub(r"([?&](?:token|key|secret|password|signature|x-amz-signature|x-amz-credential)=)[^&\s]+",
                  r"\1***", text, flags=re.I)
    for name in _SECRET_ENV:
        val = os.environ.get(name)
        if val and len(val) >= 6:
            text = text.replace(val, "***")
    return text
