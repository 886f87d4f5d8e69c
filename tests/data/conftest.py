"""Remote storage without a cloud: gs:// served from memory to every client the system uses.

- etils.epath (run directories, gin files, side files): fsspec's in-memory filesystem under gs://.
- TensorStore (the arrays Orbax writes under gs://) and google-cloud-storage (Orbax's bucket
  queries): the same store behind a minimal Cloud Storage JSON API on 127.0.0.1
  (TENSORSTORE_GCS_HTTP_URL, STORAGE_EMULATOR_HOST), with the object generations and conditional
  requests TensorStore relies on.
- tf.data and tf.io.gfile (corpus shards): TensorFlow's own GCS client cannot be pointed at a fake,
  so corpus tests use TensorFlow's in-memory filesystem (ram://), which epath is taught to reach
  through its TensorFlow backend, as it reaches gs:// in production.
"""
import hashlib
import http.server
import importlib
import json
import threading
import urllib.parse

import gin
import pytest
from etils import epath
from etils.epath import gpath
from etils.epath import register
from fsspec.implementations.memory import MemoryFileSystem


class FakeGCS(MemoryFileSystem):
  """fsspec's in-memory filesystem under the gs:// protocol, with a store of its own."""
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]

  def __init__(self, *args, finalize_on_close=False, **kwargs):  # gcsfs's option, meaningless here
    del finalize_on_close
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    return super()._strip_protocol(str(path).replace("gs://", "memory://", 1))


def _generation(data: bytes) -> str:
  """A generation that changes with the content, whoever wrote it (epath or TensorStore)."""
  return str(int(hashlib.sha1(data).hexdigest()[:15], 16) + 1)


class _JsonApi(http.server.BaseHTTPRequestHandler):
  """The Cloud Storage JSON API calls TensorStore's gcs kvstore makes: media GET (ranges,
  ifGenerationMatch / ifGenerationNotMatch), media upload, delete, list by offsets and prefix."""
  lock = threading.Lock()
  protocol_version = "HTTP/1.1"

  def log_message(self, *args):  # quiet
    pass

  def _reply(self, code: int, body: bytes = b"", headers=None):
    self.send_response(code)
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if body and self.command != "HEAD":
      self.wfile.write(body)

  def _json(self, code: int, payload):
    self._reply(code, json.dumps(payload).encode(), {"Content-Type": "application/json"})

  def _route(self):
    url = urllib.parse.urlsplit(self.path)
    query = dict(urllib.parse.parse_qsl(url.query))
    parts = url.path.split("/")  # ['', ('upload',) 'storage', 'v1', 'b', bucket, 'o', object?]
    if parts[1] == "upload":
      parts = parts[1:]
    bucket = parts[4]
    name = urllib.parse.unquote(parts[6]) if len(parts) > 6 else query.get("name")
    return bucket, name, query, len(parts) == 5

  def _precondition_failed(self, current: bytes | None, query) -> bool:
    want = query.get("ifGenerationMatch")
    if want is None:
      return False
    return (current is not None) if want == "0" else (current is None or _generation(current) != want)

  def do_GET(self):  # pylint: disable=invalid-name
    bucket, name, query, bucket_only = self._route()
    if bucket_only:  # the bucket's metadata (Orbax asks whether it has a hierarchical namespace)
      return self._json(200, {"kind": "storage#bucket", "name": bucket, "id": bucket,
                              "hierarchicalNamespace": {"enabled": False}})
    with self.lock:
      if name is None:  # list
        prefix = query.get("prefix", "")
        start, end = query.get("startOffset", ""), query.get("endOffset")
        items = []
        for key in sorted(FakeGCS.store):
          if not key.startswith(f"/{bucket}/"):
            continue
          obj = key[len(bucket) + 2:]
          if obj.startswith(prefix) and obj >= start and (end is None or obj < end):
            data = FakeGCS.store[key].getvalue()
            items.append({"name": obj, "bucket": bucket, "size": str(len(data)), "generation": _generation(data)})
        return self._json(200, {"kind": "storage#objects", "items": items})
      entry = FakeGCS.store.get(f"/{bucket}/{name}")
      data = entry.getvalue() if entry is not None else None
    if data is None:
      return self._json(404, {"error": {"code": 404, "message": "No such object"}})
    if self._precondition_failed(data, query):
      return self._json(412, {"error": {"code": 412, "message": "Precondition Failed"}})
    generation = _generation(data)
    if query.get("ifGenerationNotMatch") == generation:
      return self._reply(304, headers={"x-goog-generation": generation})
    if query.get("alt") != "media":
      return self._json(200, {"name": name, "bucket": bucket, "size": str(len(data)), "generation": generation})
    headers = {"x-goog-generation": generation, "Content-Type": "application/octet-stream"}
    ranged = self.headers.get("Range", "")
    if ranged.startswith("bytes="):
      first, _, last = ranged[len("bytes="):].partition("-")
      if first:
        first, last = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
      else:  # the last N bytes
        first, last = max(0, len(data) - int(last)), len(data) - 1
      headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
      return self._reply(206, data[first:last + 1], headers)
    return self._reply(200, data, headers)

  def do_POST(self):  # pylint: disable=invalid-name
    bucket, name, query, _ = self._route()
    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
    with self.lock:
      entry = FakeGCS.store.get(f"/{bucket}/{name}")
      if self._precondition_failed(entry.getvalue() if entry is not None else None, query):
        return self._json(412, {"error": {"code": 412, "message": "Precondition Failed"}})
      FakeGCS().pipe_file(f"gs://{bucket}/{name}", body)
    return self._json(200, {"name": name, "bucket": bucket, "size": str(len(body)),
                            "generation": _generation(body)})

  def do_DELETE(self):  # pylint: disable=invalid-name
    bucket, name, query, _ = self._route()
    with self.lock:
      entry = FakeGCS.store.get(f"/{bucket}/{name}")
      if entry is None:
        return self._json(404, {"error": {"code": 404, "message": "No such object"}})
      if self._precondition_failed(entry.getvalue(), query):
        return self._json(412, {"error": {"code": 412, "message": "Precondition Failed"}})
      del FakeGCS.store[f"/{bucket}/{name}"]
    return self._reply(204)


@pytest.fixture(scope="session")
def _gcs_json_api():
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JsonApi)
  server.daemon_threads = True
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()
  server.server_close()


@pytest.fixture
def fake_gcs(monkeypatch, _gcs_json_api):
  """gs:// served from memory: epath's fsspec backend (instead of TensorFlow's) over FakeGCS, and
  TensorStore (Orbax's arrays) over the same store through the fake JSON API."""
  for name in ("gs", "gcs"):
    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, name, FakeGCS)  # pylint: disable=protected-access
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", _gcs_json_api)
  monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "fake")  # no credential lookup
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", _gcs_json_api)  # google-cloud-storage (Orbax's bucket queries)
  monkeypatch.setenv("NO_PROXY", "127.0.0.1")
  epath.backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  FakeGCS.store.clear()
  yield
  FakeGCS.store.clear()
  FakeGCS.pseudo_dirs[:] = [""]
  epath.backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  gin.clear_config()


@pytest.fixture
def tf_ram(monkeypatch):
  """ram://: TensorFlow's in-memory filesystem (tf.data and tf.io.gfile read it natively), reached
  by epath through its TensorFlow backend. Yields a copy function local dir -> ram:// dir."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(gpath, "_URI_PREFIXES", gpath._URI_PREFIXES + ("ram://",))  # pylint: disable=protected-access
  monkeypatch.setattr(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {"ram"})  # pylint: disable=protected-access
  monkeypatch.setitem(gpath._URI_MAP_ROOT, "ram://", "/ram/")  # pylint: disable=protected-access
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "ram", epath.backend.tf_backend)  # pylint: disable=protected-access
  monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, "ram://", gpath.PosixGPath)  # pylint: disable=protected-access
  made = []

  def copy_tree(local_dir: str, remote_dir: str) -> str:
    for root, _, names in tf.io.gfile.walk(local_dir):
      target = remote_dir + root[len(local_dir):]
      tf.io.gfile.makedirs(target)
      for name in names:
        tf.io.gfile.copy(f"{root}/{name}", f"{target}/{name}", overwrite=True)
    made.append(remote_dir)
    return remote_dir

  yield copy_tree
  for directory in made:
    if tf.io.gfile.exists(directory):
      tf.io.gfile.rmtree(directory)
