"""A DEEPaaS v2 module in the old style of DEEP's demo modules (marshmallow 2 era).

Field options are keyword arguments (``missing=``, ``description=``, ``location=``,
``type="file"``), ``accept`` is read from the query only, ``predict`` may hand back the uploaded
image itself, and ``train`` starts a tensorboard-like ``multiprocessing.Process`` and a
subprocess, as the public demo modules do.
"""

import multiprocessing
import subprocess
import time
import warnings

from webargs import fields, validate

warnings.filterwarnings("ignore", module="marshmallow")  # old-style keyword arguments


def get_metadata():
    return {
        "name": "deepaas-old",
        "description": "An old-style DEEPaaS module.",
        "author": "forgehub tests",
        "version": "0.0.1",
    }


def get_predict_args():
    return {
        "demo_image": fields.Field(
            required=False,
            missing=None,
            type="file",
            location="form",
            description="An image.",
        ),
        "demo_str": fields.Str(required=False, missing="some-string", description="A string."),
        "demo_int": fields.Int(required=True, description="An integer."),
        "demo_float": fields.Float(missing=0.5, description="A float."),
        "demo_bool": fields.Bool(missing=True),
        "demo_choice": fields.Str(
            missing="one", enum=["one", "two"], validate=validate.OneOf(["one", "two"])
        ),
        "demo_list": fields.List(fields.Int(), missing=[1, 2], description="Integers."),
        "demo_password": fields.Str(missing="", format="password", description="A secret."),
        "demo_dict": fields.Dict(missing={}),
        "accept": fields.Str(
            location="query",
            description="Media type of the response.",
            validate=validate.OneOf(["application/json", "image/*", "text/plain"]),
        ),
    }


def get_train_args():
    return {
        "epochs": fields.Int(missing=1, description="Epochs."),
        "tensorboard": fields.Bool(missing=True, description="Start tensorboard."),
        "seconds": fields.Float(missing=0.2),
    }


def predict(**kwargs):
    image = kwargs.get("demo_image")
    if kwargs.get("accept") == "image/*":
        return open(image.filename, "rb")  # the upload itself
    if kwargs.get("accept") == "text/plain":
        return "plain text"
    if kwargs["demo_int"] < 0:
        raise ValueError("demo_int must not be negative")
    out = {k: v for k, v in kwargs.items() if k != "demo_image"}
    if isinstance(image, str):
        out["demo_image"] = {"text": image}
    elif image is not None:
        with open(image.filename, "rb") as fh:
            out["demo_image"] = {"name": image.original_filename, "size": len(fh.read())}
    return out


def _tensorboard():
    time.sleep(30)


def train(**kwargs):
    procs = []
    if kwargs["tensorboard"]:
        board = multiprocessing.Process(target=_tensorboard)
        board.start()
        procs.append(board.pid)
        procs.append(subprocess.Popen(["sleep", f"{30 + kwargs['epochs']}.5"]).pid)
    time.sleep(kwargs["seconds"])
    return {"epochs": kwargs["epochs"], "children": len(procs)}
