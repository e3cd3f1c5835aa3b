"""The web demo answers on loopback: page, sample scene, a segmentation, and clear errors."""

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import pytest
from PIL import Image

from attnseg.demo.web import serve


@pytest.fixture(scope="module")
def server(tiny_sd):
    srv = serve(str(tiny_sd), "cpu", "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _post(url, data):
    req = urllib.request.Request(
        url + "/api/segment", json.dumps(data).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_page_sample_and_segment(server, random_image):
    with urllib.request.urlopen(server + "/", timeout=10) as resp:
        assert b"attnseg" in resp.read() and resp.status == 200
    with urllib.request.urlopen(server + "/api/sample?seed=3", timeout=30) as resp:
        sample = json.loads(resp.read())
    assert sample["image"].startswith("data:image/png;base64,") and sample["classes"]
    buf = io.BytesIO()
    random_image.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    status, body = _post(server, {"image": url, "classes": "cat, grass", "method": "vanilla", "tau": "0.4"})
    assert status == 200, body
    assert [c["name"] for c in body["classes"]] == ["cat", "grass"] and body["meta"]["tau"] == 0.4
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay"].split(",", 1)[1])))
    assert overlay.width >= 52
    shares = sum(c["share"] for c in body["classes"]) + body["background_share"]
    assert abs(shares - 1) < 1e-5


def test_errors_are_messages(server):
    status, body = _post(server, {"classes": "cat"})
    assert status == 400 and "no image" in body["error"]
    status, body = _post(server, {"image": "data:image/png;base64,AAAA", "classes": "cat"})
    assert status == 400 and "not an image" in body["error"] and "BytesIO" not in body["error"]
    tiny = io.BytesIO()
    Image.new("RGB", (20, 20)).save(tiny, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(tiny.getvalue()).decode()
    status, body = _post(server, {"image": url, "classes": "cat,cat"})
    assert status == 400 and "twice" in body["error"]
