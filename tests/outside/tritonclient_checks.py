"""Open Inference Protocol calls with tritonclient, a client written elsewhere.

Runs in its own virtual environment (`make tritonclient`): tritonclient's
`inference` stubs and ours cannot live in one process. Reads the calls to make
as JSON on stdin, prints one JSON result per call on stdout; the caller
(tests/e2e/test_inference_protocol.py) checks them.

A call is {"name", "op", ...}: op "live", "ready", "model_ready" (model,
version), "server_metadata", "metadata" (model), or "infer" (model, datatype,
shape, values: a flat list, hex strings for BYTES; optional version, timeout_us,
priority), or "infer_named" (model, inputs: a list of {name, datatype, shape,
values}, outputs: the names to ask for), whose result holds each output's
{datatype, shape, values} by name. A result is {"call", "ok": true, ...} or {"call", "ok": false,
"status", "message"}.

Usage: tritonclient_checks.py HOST:PORT [CA [CERT KEY]]: with a CA file the client
dials with TLS (tritonclient's ssl=True), presenting CERT and KEY when given (mTLS).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

CLIENT_TIMEOUT_S = 20.0


def flat(array: np.ndarray) -> list[Any]:
    """JSON-safe flat values; BYTES elements as hex."""
    if array.dtype == object:
        return [bytes(x).hex() for x in array.reshape(-1)]
    return [x.item() for x in array.reshape(-1)]


def to_array(call: dict[str, Any]) -> np.ndarray:
    if call["datatype"] == "BYTES":
        values = [bytes.fromhex(x) for x in call["values"]]
        return np.array(values, dtype=object).reshape(call["shape"])
    dtype = triton_to_np_dtype(call["datatype"])
    return np.array(call["values"], dtype=dtype).reshape(call["shape"])


def infer(client: grpcclient.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    inp = grpcclient.InferInput("input", list(call["shape"]), call["datatype"])
    inp.set_data_from_numpy(to_array(call))
    started = time.monotonic()
    result = client.infer(
        call["model"], [inp], model_version=call.get("version", ""),
        outputs=[grpcclient.InferRequestedOutput("output")],
        request_id=call.get("request_id", ""), priority=call.get("priority", 0),
        timeout=call.get("timeout_us"), client_timeout=CLIENT_TIMEOUT_S,
    )
    elapsed_s = time.monotonic() - started
    output = result.as_numpy("output")
    response = result.get_response(as_json=True)
    return {
        "datatype": response["outputs"][0]["datatype"],
        "shape": list(output.shape),
        "values": flat(output),
        "id": response.get("id", ""),
        "model_version": response.get("model_version", ""),
        "parameters": response.get("parameters", {}),
        "elapsed_s": elapsed_s,
    }


def infer_named(client: grpcclient.InferenceServerClient,
                call: dict[str, Any]) -> dict[str, Any]:
    inputs = []
    for tensor in call["inputs"]:
        inp = grpcclient.InferInput(tensor["name"], list(tensor["shape"]), tensor["datatype"])
        inp.set_data_from_numpy(to_array(tensor))
        inputs.append(inp)
    result = client.infer(call["model"], inputs,
                          outputs=[grpcclient.InferRequestedOutput(n) for n in call["outputs"]],
                          client_timeout=CLIENT_TIMEOUT_S)
    response = result.get_response(as_json=True)
    outputs = {}
    for out in response["outputs"]:
        array = result.as_numpy(out["name"])
        outputs[out["name"]] = {"datatype": out["datatype"], "shape": list(array.shape),
                                "values": flat(array)}
    return {"outputs": outputs}


def run(client: grpcclient.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    op = call["op"]
    if op == "live":
        return {"live": client.is_server_live(client_timeout=CLIENT_TIMEOUT_S)}
    if op == "ready":
        return {"ready": client.is_server_ready(client_timeout=CLIENT_TIMEOUT_S)}
    if op == "model_ready":
        return {"ready": client.is_model_ready(call["model"], call.get("version", ""),
                                               client_timeout=CLIENT_TIMEOUT_S)}
    if op == "server_metadata":
        return dict(client.get_server_metadata(as_json=True, client_timeout=CLIENT_TIMEOUT_S))
    if op == "metadata":
        return dict(client.get_model_metadata(call["model"], call.get("version", ""),
                                              as_json=True, client_timeout=CLIENT_TIMEOUT_S))
    if op == "infer":
        return infer(client, call)
    if op == "infer_named":
        return infer_named(client, call)
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    url, tls_files = sys.argv[1], sys.argv[2:]
    calls = json.load(sys.stdin)
    results = []
    tls: dict[str, Any] = {}
    if tls_files:
        tls = {"ssl": True, "root_certificates": tls_files[0]}
    if len(tls_files) == 3:
        tls |= {"certificate_chain": tls_files[1], "private_key": tls_files[2]}
    with grpcclient.InferenceServerClient(url=url, **tls) as client:
        for call in calls:
            try:
                result = {"ok": True, **run(client, call)}
            except InferenceServerException as exc:
                result = {"ok": False, "status": exc.status(), "message": exc.message()}
            results.append({**result, "call": call["name"]})
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
