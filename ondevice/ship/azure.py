"""Azure ML access shared by the model source (azureml_source), `make register` (azure_register)
and `make azure-job`: the workspace, its client, retries of transient errors, one-line credential errors.

Workspace coordinates come from params (`register.azure`) or the environment, never secrets:
credentials are DefaultAzureCredential's business (az login, managed identity, env vars).
"""
from __future__ import annotations

import contextlib
import os
import time

from ondevice.atomic import UserError

ENV = {"subscription_id": "AZURE_SUBSCRIPTION_ID", "resource_group": "AZURE_RESOURCE_GROUP",
       "workspace": "AZUREML_WORKSPACE_NAME"}


def workspace(params: dict, environ=os.environ) -> dict:
    """Resolve subscription / resource group / workspace: params first, then the environment."""
    given = (params.get("register") or {}).get("azure") or {}
    out, missing = {}, []
    for key, env in ENV.items():
        value = given.get(key) or environ.get(env)
        if not value:
            missing.append(f"register.azure.{key} or ${env}")
        out[key] = value
    if missing:
        raise UserError(f"Azure ML workspace not configured: set {', '.join(missing)}")
    return out


def client(ws: dict):
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    return MLClient(DefaultAzureCredential(), subscription_id=ws["subscription_id"],
                    resource_group_name=ws["resource_group"], workspace_name=ws["workspace"])


def with_retries(call, attempts: int = 4, base_delay: float = 2.0):
    """Retry transient failures (connection errors, 429, 5xx) with exponential backoff."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    for attempt in range(attempts):
        try:
            return call()
        except (ServiceRequestError, ServiceResponseError, HttpResponseError) as e:
            status = getattr(e, "status_code", None)
            transient = not isinstance(e, HttpResponseError) or status in (408, 429) or (status or 0) >= 500
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(base_delay * 2**attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def credentials_checked():
    """Rejected or missing credentials (DefaultAzureCredential found none that works) become one line."""
    from azure.core.exceptions import ClientAuthenticationError

    try:
        yield
    except ClientAuthenticationError as e:
        raise UserError(f"Azure credentials were rejected or missing ({type(e).__name__}); run `az login` or "
                        "set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET") from None
