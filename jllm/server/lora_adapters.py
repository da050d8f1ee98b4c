"""vLLM's runtime LoRA routes, behind the model's ``allow_runtime_lora_updating`` key (vLLM's
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``):

    POST /v1/load_lora_adapter    {"lora_name", "lora_path"[, "model"]} -> 200, the adapter served as lora_name
    POST /v1/unload_lora_adapter  {"lora_name"} -> 200; 404 for a name that is no adapter

``model`` (jllm's): the base model the adapter is for, where a server serves several (default: the first).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from jllm.server.errors import APIError
from jllm.server.registry import ServedModel
from jllm.server.state import request_body, server_state


class LoadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str
    model: str | None = None


class UnloadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_int_id: int | None = None  # vLLM's field; the name alone says which adapter


def _check_allowed(served: ServedModel) -> None:
    if not served.entry.config.lora.allow_runtime_lora_updating:
        raise APIError(
            404,
            f"runtime LoRA updating is off for model `{served.name}`: start it with allow_runtime_lora_updating: true "
            "(and enable_lora: true)",
            code="not_found",
        )


async def load_lora_adapter(request: web.Request) -> web.Response:
    body = await request_body(request, LoadLoRAAdapterRequest)
    registry = server_state(request).registry
    _check_allowed(registry.route(body.model))
    await registry.load_adapter(body.lora_name, body.lora_path, body.model)
    return web.Response(text=f"Success: LoRA adapter '{body.lora_name}' added successfully.")


async def unload_lora_adapter(request: web.Request) -> web.Response:
    body = await request_body(request, UnloadLoRAAdapterRequest)
    registry = server_state(request).registry
    if registry.lora_for(body.lora_name) is not None:  # else unload_adapter's 404
        _check_allowed(registry.route(body.lora_name))
    await registry.unload_adapter(body.lora_name)
    return web.Response(text=f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
