"""A GCS emulator on 127.0.0.1 for the tests: gcp-storage-emulator (the GCS JSON API, in
memory), with two parts of the real protocol it leaves out put back, as GCS documents them:

- a download (or an object's metadata) carries the object's generation in `x-goog-generation` (and
  `x-goog-metageneration`): TensorStore reads it there, and without it fails reading an
  OCDBT manifest ("Malformed StorageGeneration");
- an upload with `ifGenerationMatch` is refused with 412 Precondition Failed unless the
  object's generation is that number (0: the object must not exist): TensorStore's
  conditional writes and bt_jax's lock (an exclusive create) rely on it.

    python tests/gcs_emulator.py --port 9023 --bucket test-bucket
"""
import argparse
import sys
from http import HTTPStatus

from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _object(storage, request):
    try:
        return storage.get_file_obj(request.params["bucket_name"],
                                    request.params["object_id"])
    except (NotFound, KeyError):
        return None


def _with_generation_headers(download):
    def handler(request, response, storage, *args, **kwargs):
        obj = _object(storage, request)
        if obj is not None:
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])
        return download(request, response, storage, *args, **kwargs)
    return handler


def _upload_name(request):
    """The object an upload writes: its `name` query parameter, else the name in its
    metadata (a multipart upload's first part, a resumable upload's body)."""
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data or {}
    meta = data.get("meta") if isinstance(data, dict) and "meta" in data else data
    return meta.get("name") if isinstance(meta, dict) else None


def _with_generation_precondition(upload):
    def handler(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        if wanted:
            name = _upload_name(request)
            obj = None
            if name is not None:
                try:
                    obj = storage.get_file_obj(request.params["bucket_name"], name)
                except NotFound:
                    obj = None
            current = "0" if obj is None else str(obj["generation"])
            if wanted[0] != current:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "Precondition Failed"}})
                return None
        return upload(request, response, storage, *args, **kwargs)
    return handler


def patch_handlers() -> None:
    """Wraps the emulator's download and upload routes in place."""
    for _, methods in emulator_server.HANDLERS:
        for method, handler in list(methods.items()):
            if handler in (objects.download, objects.get):
                methods[method] = _with_generation_headers(handler)
            elif handler is objects.insert:
                methods[method] = _with_generation_precondition(handler)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", required=True)
    args = parser.parse_args(argv)
    patch_handlers()
    server = emulator_server.create_server("127.0.0.1", args.port, in_memory=True,
                                           default_bucket=args.bucket)
    print(f"GCS emulator on http://127.0.0.1:{args.port}, bucket {args.bucket}", flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
