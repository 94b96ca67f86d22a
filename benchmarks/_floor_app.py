"""The HTTP floor for ``serve_load.py``: the same server stack without a model.

``tympan serve`` minus everything tympan does with a request: uvicorn with tympan's h11
protocol and timeouts, FastAPI, the same multipart ``POST /predict/file`` reading the whole
upload, and a JSON answer of the size a 5-s clip's real answer has. Whatever the real server
takes beyond this is decoding, features, the network and tympan's own request path.

    python benchmarks/_floor_app.py --port 8123
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import Response

#: a /predict body of the usual size (one window, top 3), pre-rendered
BODY = (b'{"model":{"name":"floor","arch":"none","version":"000000000000"},"top_k":['
        + b",".join(b'{"label":"class%d","index":%d,"probability":0.%06d}' % (i, i, i) for i in range(3))
        + b'],"ood":{"score_name":"energy","score":-7.2,"threshold":-4.1,"out_of_distribution":false},'
          b'"uncertain":false,"uncertain_reasons":[],"audio":{"duration_s":5.0,"sample_rate":44100,'
          b'"channels":1,"format":"FLAC","subtype":"PCM_16"},"windows":[{"start_s":0.0,"end_s":5.0,"top_k":['
        + b",".join(b'{"label":"class%d","index":%d,"probability":0.%06d}' % (i, i, i) for i in range(3))
        + b'],"ood_score":-7.2,"out_of_distribution":false}],"aggregate":"mean of window probabilities",'
          b'"temperature":1.0,"warnings":[],"timing_ms":0.0}')


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/predict/file")
    async def predict_file(file: UploadFile = File(...), top_k: int | None = Form(None)) -> Response:
        data = await file.read()
        return Response(BODY if data else b"{}", media_type="application/json")

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main() -> None:
    import uvicorn

    from tympan.serving.server import uvicorn_config
    from tympan.serving.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    settings = Settings.from_env(log_level="warning")
    uvicorn.Server(uvicorn_config(create_app(), settings, args.host, args.port)).run()


if __name__ == "__main__":
    main()
