"""Send one digits query and its feedback to a running mesh; print the answer as one JSON line.

    .venv/bin/python examples/python/digits_client.py --target 127.0.0.1:1337 \
        --values 0,0,5,13,9,1,0,0,...   # 64 pixel values, 0..16

The feedback's label is `--label` when given, else the predicted digit. `--tls-ca FILE`
dials with TLS (`--tls-cert`/`--tls-key`: a client certificate, for mTLS).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from services.client import Client, ClientError, ClientTLS


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="127.0.0.1:1337")
    p.add_argument("--app", default="digits")
    p.add_argument("--values", required=True, help="64 comma-separated pixel values")
    p.add_argument("--label", type=int, help="true digit for the feedback")
    p.add_argument("--context", default="", help="context key (a user id)")
    p.add_argument("--timeout-s", type=float, default=10.0)
    p.add_argument("--tls-ca", default="", help="dial with TLS, trusting this PEM CA")
    p.add_argument("--tls-cert", default="", help="PEM client certificate (mTLS)")
    p.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    args = p.parse_args()

    x = np.array([float(v) for v in args.values.split(",")], dtype=np.float32)
    tls = ClientTLS(args.tls_ca, args.tls_cert, args.tls_key)
    with Client(args.target, timeout_s=args.timeout_s, tls=tls) as client:
        try:
            prediction = client.predict(args.app, x, context_key=args.context)
            label = prediction.output if args.label is None else np.int64(args.label)
            scored = client.feedback(args.app, label, query_id=prediction.query_id,
                                     context_key=args.context)
        except ClientError as exc:
            print(f"error: {exc.code.name}: {exc.details}", file=sys.stderr)
            return 1
    print(json.dumps({
        "client": "python",
        "query_id": prediction.query_id,
        "output": prediction.output.tolist(),
        "default_used": prediction.default_used,
        "models": list(prediction.models),
        "feedback_models": scored,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
