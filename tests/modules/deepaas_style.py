"""A DEEPaaS v2 module written the DEEPaaS way (functions + webargs field dicts).

It uses every field type forgehub must understand, a file, ``accept`` with JSON, zip and image,
and a response ``schema``. It reports what it received, so tests can compare what module code
sees through forgehub and through ``deepaas-run``.
"""

import io
import json
import tempfile
import time
import zipfile

from webargs import fields, validate

try:
    from deepaas.model.v2.wrapper import UploadedFile
except ImportError:  # pragma: no cover
    UploadedFile = None

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cf000000030101001836dd8d0000000049454e44ae426082"
)

schema = {
    "text": fields.Str(required=True),
    "count": fields.Int(),
    "ratio": fields.Float(),
    "flag": fields.Bool(),
    "tags": fields.List(fields.Str()),
    "color": fields.Str(allow_none=True),
    "options": fields.Dict(),
    "file": fields.Dict(allow_none=True),
}


def get_metadata():
    return {
        "id": "0",
        "name": "deepaas-style",
        "description": "A DEEPaaS-style test module with every field type.",
        "author": "forgehub tests",
        "version": "0.1.0",
        "license": "Apache 2.0",
    }


def warm():
    pass


def get_predict_args():
    return {
        "text": fields.Str(
            required=True,
            validate=validate.Length(min=1, max=20),
            metadata={"description": "Some text."},
        ),
        "count": fields.Int(
            load_default=2,
            validate=validate.Range(min=1, max=5),
            metadata={"description": "How many."},
        ),
        "ratio": fields.Float(load_default=0.5, validate=validate.Range(min=0.0, max=1.0)),
        "flag": fields.Bool(load_default=False),
        "tags": fields.List(fields.Str(), load_default=[]),
        "color": fields.Str(
            validate=validate.OneOf(["red", "green", "blue"]),
            metadata={"enum": ["red", "green", "blue"]},
        ),
        "options": fields.Dict(load_default={}),
        "data": fields.Raw(
            metadata={"type": "file", "location": "form", "description": "Any file."}
        ),
        "accept": fields.Str(
            validate=validate.OneOf(["application/json", "application/zip", "image/png"]),
            metadata={"location": "headers", "description": "Response media type."},
        ),
    }


def get_train_args():
    return {
        "seconds": fields.Float(load_default=0.1, validate=validate.Range(min=0, max=60)),
        "fail": fields.Bool(load_default=False),
        "children": fields.Bool(
            load_default=False,
            metadata={
                "description": "Start a helper process and a subprocess, as modules do "
                "for tensorboard (they end with the training)."
            },
        ),
        "tag": fields.Int(load_default=0, validate=validate.Range(min=0, max=999)),
    }


def _helper() -> None:  # what a module's tensorboard process does: live on
    time.sleep(60)


def predict(**kwargs):
    if kwargs["text"] == "boom":
        raise ValueError("the text 'boom' is not allowed")
    data = kwargs.get("data")
    file_info = None
    if data is not None:
        with open(data.filename, "rb") as fh:
            content = fh.read()
        file_info = {
            "is_deepaas_uploaded_file": UploadedFile is not None and isinstance(data, UploadedFile),
            "original_filename": data.original_filename,
            "content_type": data.content_type,
            "size": len(content),
        }
    echo = {
        "text": kwargs["text"],
        "count": kwargs["count"],
        "ratio": kwargs["ratio"],
        "flag": kwargs["flag"],
        "tags": kwargs["tags"],
        "color": kwargs.get("color"),
        "options": kwargs["options"],
        "file": file_info,
    }
    accept = kwargs.get("accept", "application/json")
    if accept == "application/zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("echo.json", json.dumps(echo, sort_keys=True))
        return buf.getvalue()
    if accept == "image/png":
        tmp = tempfile.NamedTemporaryFile(suffix=".png", delete=False)
        tmp.write(PNG_1x1)
        tmp.close()
        return open(tmp.name, "rb")
    return echo


def train(**kwargs):
    pids = []
    if kwargs.get("children"):
        import multiprocessing
        import subprocess

        helper = multiprocessing.Process(target=_helper, daemon=True)  # the tensorboard pattern
        helper.start()
        sleeper = subprocess.Popen(["sleep", f"{1000 + kwargs.get('tag', 0)}.25"])
        pids = [helper.pid, sleeper.pid]
    end = time.time() + kwargs["seconds"]
    while time.time() < end:
        time.sleep(0.02)
    if kwargs["fail"]:
        raise RuntimeError("asked to fail")
    return {"trained_for": kwargs["seconds"], "pids": pids}
