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


XSS = "water <img src=x onerror=alert(1)>"
# A DOM just large enough for the page's script: elements record what is set on them, and any markup
# assigned through innerHTML/outerHTML/insertAdjacentHTML is kept to be checked.
FAKE_DOM = r"""
const html = [];
function node(tag) {
  const e = {tag, attrs: {}, kids: [], style: {}, value: "", textContent: "", disabled: false,
    setAttribute(k, v) { this.attrs[k] = String(v); }, append(...c) { this.kids.push(...c); },
    replaceChildren(...c) { this.kids = c; }, click() { return this.onclick && this.onclick(); },
    insertAdjacentHTML(_, s) { html.push(s); } };
  for (const k of ["innerHTML", "outerHTML"])
    Object.defineProperty(e, k, { set(s) { html.push(String(s)); }, get() { return ""; } });
  return e;
}
const nodes = {};
globalThis.document = { getElementById: id => (nodes[id] ??= node(id)), createElement: node,
  write: s => html.push(s) };
globalThis.location = { hash: "" };
globalThis.FileReader = function () {};
const reply = JSON.parse(require("fs").readFileSync(process.argv[2], "utf8"));
globalThis.fetch = async () => ({ json: async () => reply });
function text(e) { return typeof e === "string" ? e : [e.textContent, ...e.kids.map(text)].join(""); }
function tags(e) { return typeof e === "string" ? [] : [e.tag, ...e.kids.flatMap(tags)]; }
"""


def test_class_names_reach_the_page_as_text_never_as_markup(server, random_image, tmp_path):
    """The page's own script, run on a server answer for a class named with markup."""
    import re
    import shutil
    import subprocess

    from attnseg.demo.web import PAGE

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    buf = io.BytesIO()
    random_image.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    status, body = _post(server, {"image": url, "classes": "water, grass"})
    assert status == 200, body
    # The tiny test tokenizer cannot spell '<'; a real CLIP can, and its answer would carry the name as is.
    body["classes"][0]["name"] = XSS
    (tmp_path / "reply.json").write_text(json.dumps(body))
    script = re.search(r"<script>(.*)</script>", PAGE, re.S).group(1)
    check = (
        "(async () => { await document.getElementById('go').onclick();"
        " const r = document.getElementById('result');"
        " console.log(JSON.stringify({html, text: text(r), tags: tags(r)})); })();"
    )
    (tmp_path / "page.js").write_text(FAKE_DOM + script + check)
    done = subprocess.run(
        [node, str(tmp_path / "page.js"), str(tmp_path / "reply.json")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["html"] == []  # nothing is parsed as markup
    assert XSS in seen["text"]  # the name is shown, as the text it is
    assert seen["tags"].count("img") == 3  # the overlay and two score maps: no image from the class name


def test_page_uses_no_markup_sinks():
    from attnseg.demo.web import PAGE

    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in PAGE


def test_bad_request_fields_are_named(server, random_image):
    buf = io.BytesIO()
    random_image.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    for extra, message in (
        ({"tau": "abc"}, "τ must be a number"),
        ({"seed": "1e400"}, "the seed must be a number"),
        ({"method": "best"}, "unknown method 'best'"),
        ({"image": "data:image/png;base64,@@@"}, "arrived garbled"),
    ):
        status, body = _post(server, {"image": url, "classes": "cat", **extra})
        assert status == 400 and message in body["error"], body
    big = io.BytesIO()
    Image.new("RGB", (5000, 4000)).save(big, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(big.getvalue()).decode()
    status, body = _post(server, {"image": url, "classes": "cat"})
    assert status == 400 and "over the limit" in body["error"] and "--max-pixels" not in body["error"]
    try:
        urllib.request.urlopen(server + "/api/sample?seed=abc", timeout=10)
        raise AssertionError("a bad seed was accepted")
    except urllib.error.HTTPError as err:
        assert "seed must be a number" in json.loads(err.read())["error"]
