"""`attnseg serve`: a small web page to segment your own images (standard library server, no extra packages)."""

from __future__ import annotations

import argparse
import base64
import binascii
import errno
import io
import json
import math
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from attnseg.errors import AttnsegError, BadClassesError, BadConfigError, BadImageError
from attnseg.io import image_notes, prepare_image
from attnseg.method.config import METHOD_PRESETS
from attnseg.segmentation import palette

MAX_BODY = 25 * 1024 * 1024


def _png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _heatmap(scores_hw: torch.Tensor) -> Image.Image:
    """A score map in [0, 1] as a blue→yellow picture."""
    x = scores_hw.clamp(0, 1).numpy()
    rgb = np.stack([x, x**0.5 * 0.9, 1 - x], -1) * 255
    return Image.fromarray(rgb.astype(np.uint8))


def _number(value: object, what: str, kind: type) -> float | int:
    """A number from a request field; BadConfigError names the field."""
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise BadConfigError(f"{what} must be a number, got {str(value)[:40]!r}") from None
    if kind is int and not 0 <= number < 2**63:
        raise BadConfigError(f"{what} must lie in 0–{2**63 - 1}, got {number}")
    if kind is float and not math.isfinite(number):
        raise BadConfigError(f"{what} must be a finite number, got {value!r}")
    return number


class DemoApp:
    """Holds the loaded model; answers segment and sample requests. One forward at a time."""

    def __init__(self, model: str | None, device: str | None) -> None:
        from attnseg.segmentor import Segmentor

        self.base = Segmentor.from_pretrained(model, device=device)
        self.lock = threading.Lock()

    def segment(self, request: dict) -> dict:
        data_url = request.get("image", "")
        if not isinstance(data_url, str) or "," not in data_url:
            raise BadImageError("no image was sent: choose a file or a sample scene first")
        try:
            data = base64.b64decode(data_url.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            raise BadImageError("the upload arrived garbled; choose the file again") from None
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except UnidentifiedImageError:
            raise BadImageError(
                "the uploaded file is not an image this page can read (PNG, JPEG, WebP, GIF, TIFF, …)"
            ) from None
        except Exception:  # noqa: BLE001 — any other decoding failure is the same user mistake
            raise BadImageError(
                "the uploaded image could not be decoded; the file is probably truncated or corrupt"
            ) from None
        notes = image_notes(io.BytesIO(data))
        image = prepare_image(image, "the uploaded image", self.base.max_pixels, limit_option=None)
        method = request.get("method", "goca")
        if method not in METHOD_PRESETS:
            raise BadConfigError(
                f"unknown method {str(method)[:40]!r}; choose one of {', '.join(METHOD_PRESETS)}"
            )
        tau = None if request.get("tau") in (None, "") else _number(request["tau"], "τ", float)
        seed = _number(request.get("seed", 0), "the seed", int)
        classes = request.get("classes", "")
        if not isinstance(classes, (str, list)):
            raise BadClassesError("classes must be a comma-separated text, e.g. 'sky, grass, circle'")
        seg = self.base.with_config(method, tau=tau)  # shares the loaded model: nothing reloaded or re-hashed
        with self.lock, torch.no_grad():
            result = seg.segment(image, classes, seed=seed)
        colours = palette(len(result.classes))
        labels = result.labels
        share = {name: float((labels == k + 1).float().mean()) for k, name in enumerate(result.classes)}
        return {
            "overlay": _png_data_url(result.overlay()),
            "classes": [
                {
                    "name": name,
                    "colour": "#{:02x}{:02x}{:02x}".format(*colours[k + 1]),
                    "share": share[name],
                    "heatmap": _png_data_url(_heatmap(result.scores[k])),
                }
                for k, name in enumerate(result.classes)
            ],
            "background_share": float((labels == 0).float().mean()),
            "meta": {
                "method": method,
                "tau": seg.config.tau,
                "seed": result.meta["seed"],
                "model": result.meta["model"]["model_id"],
                "seconds": round(sum(v for k, v in result.meta["timings"].items() if k.endswith("_s")), 3),
                "notes": notes + ([note] if (note := seg.model_note([image])) else []),
            },
        }

    def model_note(self) -> str | None:
        """What to know about the loaded model (the embedded one is small and synthetic), or None."""
        return self.base.model_note()

    def sample(self, seed: int) -> dict:
        from attnseg.world.render import CLASSES, render_scenes

        _, scene = next(iter(render_scenes("test", 1, seed)))
        names = [c.name for c in CLASSES if c.id in scene.present]
        return {
            "image": _png_data_url(Image.fromarray(scene.image)),
            "caption": scene.caption,
            "classes": ", ".join(names),
        }


def make_handler(app_: DemoApp | None):
    """The request handler class bound to one app."""

    class Handler(BaseHTTPRequestHandler):
        # The app is bound after the port is taken (serve), so a busy port fails before the model loads.
        app = app_

        def log_message(self, fmt: str, *args) -> None:  # quiet: one line per request is noise here
            pass

        def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: HTTPStatus, data: dict) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 — the http.server API
            if self.path == "/":
                self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            elif self.path.startswith("/api/sample"):
                seed = self.path.partition("seed=")[2] or "0"
                try:
                    self._json(HTTPStatus.OK, self.app.sample(int(_number(seed, "the sample's seed", int))))
                except AttnsegError as exc:
                    self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                except ImportError:
                    self._json(
                        HTTPStatus.BAD_REQUEST, {"error": "this build has no synthetic world to sample"}
                    )
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"nothing at {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/api/segment":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"nothing at {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "the request had no valid Content-Length"})
                return
            if length > MAX_BODY:
                self._json(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    {"error": "the image is over 25 MB; send a smaller one"},
                )
                return
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(request, dict):
                    raise BadConfigError("the request must be a JSON object")
                self._json(HTTPStatus.OK, self.app.segment(request))
            except json.JSONDecodeError:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "the request was not JSON"})
            except (AttnsegError, ValueError) as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

    return Handler


def bind(host: str, port: int) -> ThreadingHTTPServer:
    """A server listening on host:port, with no model yet; BadConfigError says why it cannot listen."""
    if not 0 <= port <= 65535:
        raise BadConfigError(f"--port {port} is not a port; choose one in 1–65535 (0: any free port)")
    try:
        return ThreadingHTTPServer((host, port), make_handler(None))
    except socket.gaierror:
        raise BadConfigError(f"--host {host!r} is not an address of this machine; use 127.0.0.1") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BadConfigError(
                f"port {port} on {host} is already in use (another attnseg serve?); choose another --port"
            ) from None
        if exc.errno == errno.EACCES:
            raise BadConfigError(f"port {port} needs administrator rights; choose one above 1023") from None
        raise BadConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def serve(model: str | None, device: str | None, host: str, port: int) -> ThreadingHTTPServer:
    """A started server (call serve_forever, or shutdown when done); the port is taken before the model loads."""
    from attnseg.segmentor import parse_device

    parse_device(device)
    server = bind(host, port)
    try:
        server.RequestHandlerClass = make_handler(DemoApp(model, device))
    except BaseException:
        server.server_close()
        raise
    return server


def add_serve_command(subparsers) -> None:
    """Register `attnseg serve`."""
    parser = subparsers.add_parser(
        "serve",
        help="a web page to segment your own images",
        description="Serve a web page to upload an image, name the classes and see the overlay and score maps.",
    )
    parser.add_argument("--model", default=None, help="as for segment (default: the embedded default)")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present, else cpu)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (0: any free port)")
    parser.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    server = serve(args.model, args.device, args.host, args.port)
    print(f"attnseg demo on http://{args.host}:{server.server_address[1]}/  (Ctrl-C to stop)")
    note = server.RequestHandlerClass.app.model_note()
    if note:
        print(f"note: {note}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


METHOD_OPTIONS = "".join(f'<option value="{m}">{m}</option>' for m in METHOD_PRESETS)
PAGE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>attnseg</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
 header{background:#1d2330;color:#fff;padding:14px 24px} header b{font-size:19px} header span{opacity:.7;margin-left:10px}
 main{display:grid;grid-template-columns:340px 1fr;gap:20px;padding:20px 24px}
 .card{background:#fff;border-radius:10px;box-shadow:0 1px 3px #0002;padding:16px}
 label{display:block;font-weight:600;margin:12px 0 4px} input[type=text],select{width:100%;box-sizing:border-box;padding:7px;border:1px solid #c6cad3;border-radius:6px}
 button{margin-top:14px;padding:9px 16px;border:0;border-radius:6px;background:#3563e9;color:#fff;font-weight:600;cursor:pointer}
 button.ghost{background:#e7eaf1;color:#1d2330;margin-left:6px} button:disabled{opacity:.5}
 #preview{display:block;width:100%;margin-top:10px;border-radius:6px;image-rendering:pixelated}
 #preview:not([src]){display:none}
 #overlay{max-width:100%;image-rendering:pixelated;border-radius:6px}
 .maps{display:flex;flex-wrap:wrap;gap:12px;margin-top:14px} .maps figure{margin:0;width:150px}
 .maps img{width:150px;height:150px;object-fit:contain;image-rendering:pixelated;border-radius:6px;background:#eee}
 .maps figcaption{font-size:13px} .swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
 .note{color:#7a4b00;background:#fff4d6;border-radius:6px;padding:6px 8px;margin-top:8px;font-size:13px}
 #error{color:#b3261e;margin-top:10px} #meta{color:#5b6272;font-size:13px;margin-top:8px}
</style></head><body>
<header><b>attnseg</b><span>name the classes, get a label map — training-free, from a diffusion model's attention.
 The default model is a small one trained on synthetic 64×64 scenes (sky, grass, water, wall, floor and shapes).</span></header>
<main><section class="card">
 <label>Image</label><input type="file" id="file" accept="image/*"> <button class="ghost" id="sample">Sample scene</button>
 <img id="preview" alt="">
 <label>Classes <small>(comma-separated; synonyms with |)</small></label><input type="text" id="classes" value="sky, grass, circle">
 <label>Method</label><select id="method">"""
    + METHOD_OPTIONS
    + """</select>
 <label>Background threshold τ: <span id="tauv">0.5</span></label><input type="range" id="tau" min="0" max="1" step="0.05" value="0.5" style="width:100%">
 <button id="go">Segment</button><div id="error"></div>
</section><section class="card"><div id="result">Choose an image (or a sample scene), name the classes, press Segment.</div></section></main>
<script>
let image="";
const $=id=>document.getElementById(id);
$("tau").oninput=()=>$("tauv").textContent=$("tau").value;
$("file").onchange=e=>{const r=new FileReader();r.onload=()=>{image=r.result;$("preview").src=image};r.readAsDataURL(e.target.files[0])};
async function loadSample(seed){const r=await fetch("/api/sample?seed="+seed);const d=await r.json();
 if(d.error){$("error").textContent=d.error;return false} image=d.image;$("preview").src=image;$("classes").value=d.classes;return true}
$("sample").onclick=()=>loadSample(Math.floor(Math.random()*1000));
// Every string from the server (class names, model id, notes) goes in as text, never as HTML.
function el(tag,attrs,...kids){const e=document.createElement(tag);for(const k in attrs)e.setAttribute(k,attrs[k]);
 for(const c of kids)e.append(c);return e}
function show(d){const m=d.meta;
 const maps=el("div",{class:"maps"},...d.classes.map(c=>{const sw=el("span",{class:"swatch"});sw.style.background=c.colour;
  return el("figure",{},el("img",{src:c.heatmap,alt:""}),el("figcaption",{},sw,`${c.name} — ${(100*c.share).toFixed(1)}%`))}));
 const notes=(m.notes||[]).map(n=>el("div",{class:"note"},"Note: "+n));
 $("result").replaceChildren(el("img",{id:"overlay",src:d.overlay,alt:"overlay"}),
  el("div",{id:"meta"},`${m.method}, τ ${m.tau}, seed ${m.seed}, ${m.seconds}s — ${m.model}`),...notes,maps)}
$("go").onclick=async()=>{$("error").textContent="";$("go").disabled=true;$("go").textContent="Segmenting…";
 try{const r=await fetch("/api/segment",{method:"POST",headers:{"Content-Type":"application/json"},
  body:JSON.stringify({image,classes:$("classes").value,method:$("method").value,tau:$("tau").value})});
  const d=await r.json(); if(d.error){$("error").textContent=d.error;return}
  show(d);
 }catch(e){$("error").textContent=String(e)}finally{$("go").disabled=false;$("go").textContent="Segment"}};
// http://host:port/#sample opens on a sample scene, already segmented
if(location.hash==="#sample"){loadSample(1).then(ok=>{if(ok)$("go").click()})}
</script></body></html>"""
)
