"""A DEEPaaS-style module that says where its weights go (metadata "weights": {"env": …}) and
answers with what it found there."""

import os
from pathlib import Path

from webargs import fields

WEIGHTS_ENV = "DEEPAAS_WEIGHTS_TEST_PATH"


def get_metadata():
    return {
        "name": "deepaas-weights",
        "description": "Reads its weights.",
        "weights": {"env": WEIGHTS_ENV},
    }


def get_predict_args():
    return {"x": fields.Int(load_default=1)}


def predict(**kwargs):
    path = os.environ.get(WEIGHTS_ENV)
    return {"weights": Path(path).read_text() if path else "shipped", "x": kwargs["x"]}
