"""The synthetic scene world: procedural stuff and things with exact masks and varied captions."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from attnseg.errors import BadConfigError
from attnseg.io import check_output_folder, output_folder
from attnseg.labelmaps import IGNORE_INDEX

BACKGROUND_ID = 0
SUPERSAMPLE = 4


@dataclass(frozen=True)
class WorldClass:
    """One class of the world: id, display name, synonyms, and whether it is a thing or stuff."""

    id: int
    name: str
    kind: str
    synonyms: tuple[str, ...] = ()


STUFF = ("sky", "grass", "water", "wall", "floor")
THINGS = ("circle", "square", "triangle", "star", "heart", "cross", "bow tie", "crescent moon")
CLASSES: tuple[WorldClass, ...] = tuple(
    [WorldClass(i + 1, n, "stuff", (n,)) for i, n in enumerate(STUFF)]
    + [WorldClass(len(STUFF) + i + 1, n, "thing", (n,)) for i, n in enumerate(THINGS)]
)
CLASS_BY_NAME = {c.name: c for c in CLASSES}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "orange": (245, 135, 20),
    "purple": (135, 50, 180),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "brown": (120, 70, 30),
}
SIZE_WORDS = {"small": (0.0, 0.42), "big": (0.7, 1.01)}
# A thing's radius as a share of the image side: MIN + SPAN·rel, rel uniform in [0, 1) (docs/WORLD.md: larger
# things did not help).
THING_RADIUS_MIN, THING_RADIUS_SPAN = 0.09, 0.13

# Words the captions use besides class names and colours: the tokenizer's vocabulary is built from these.
PREFIXES = ("", "a photo of", "a picture of", "there is", "an image of", "this is", "we see", "look at")
THING_ARTICLES = ("a", "the", "one", "a")
STUFF_ARTICLES = ("the", "some", "", "the")
CONNECTORS = ("and", ",", "next to", "with", "near", "above", "below", "beside", "in front of", "and")
STUFF_LINKS = ("on the", "in the", "under the", "over the", "against the", "and the", "with the", "by the")
SUFFIXES = ("", ".", " in the scene", " here", " today")
EXTRA_WORDS = (
    "of",
    "a",
    "an",
    "the",
    "photo",
    "picture",
    "image",
    "scene",
    "class",
    "classes",
    "background",
    "object",
)


def caption_vocabulary() -> list[str]:
    """Every word a world caption or a class prompt may use, sorted."""
    words: set[str] = set()
    phrases = (
        list(PREFIXES)
        + list(THING_ARTICLES)
        + list(STUFF_ARTICLES)
        + list(CONNECTORS)
        + list(STUFF_LINKS)
        + list(SUFFIXES)
        + list(EXTRA_WORDS)
        + list(COLOURS)
        + list(SIZE_WORDS)
        + [c.name for c in CLASSES]
    )
    for p in phrases:
        for w in p.replace(",", " , ").replace(".", " . ").split():
            words.add(w)
    return sorted(words)


@dataclass
class Scene:
    """One rendered scene: RGB image H×W×3, mask H×W (class ids), caption, present and named class ids."""

    image: np.ndarray
    mask: np.ndarray
    caption: str
    present: list[int]
    named: list[int]
    things: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- stuff textures


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1] of size h×w from a cells×cells random grid (bilinear)."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> np.ndarray:
    """A colour with each channel moved by up to ±amount (0–255 scale)."""
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _texture(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    """A procedural h×w×3 float texture for one stuff class."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if name == "sky":
        top = _jitter(rng, (70, 130, 225), 25)
        bottom = _jitter(rng, (175, 210, 245), 20)
        t = (yy / h)[..., None]
        img = top * (1 - t) + bottom * t
        clouds = _value_noise(rng, h, w, int(rng.integers(3, 6)))
        cover = np.clip((clouds - rng.uniform(0.55, 0.75)) * 4, 0, 1)[..., None]
        img = img * (1 - cover) + np.array([250, 250, 252], np.float32) * cover
    elif name == "grass":
        base = _jitter(rng, (60, 150, 50), 25)
        n = _value_noise(rng, h, w, 8)[..., None]
        img = base * (0.75 + 0.4 * n)
        blades = rng.random((h, w)) < 0.06
        blades = blades | np.roll(blades, 1, axis=0) | np.roll(blades, 2, axis=0)
        img[blades] *= rng.uniform(0.55, 0.75)
    elif name == "water":
        base = _jitter(rng, (30, 110, 170), 25)
        f = rng.uniform(0.04, 0.09) * SUPERSAMPLE / 4
        ph = rng.uniform(0, 2 * math.pi)
        waves = np.sin(yy * f * 6 + 2.0 * np.sin(xx * f * 1.5 + ph))
        img = base * (0.8 + 0.15 * waves[..., None])
        crest = waves > 0.93
        img[crest] = img[crest] * 0.4 + 150
    elif name == "wall":
        mortar = _jitter(rng, (200, 195, 185), 15)
        brick = _jitter(rng, rng.choice([(170, 75, 55), (190, 170, 140), (140, 140, 150)]), 20)
        bh = int(rng.integers(6, 10)) * SUPERSAMPLE // 2
        bw = bh * 2
        row = (yy // bh).astype(int)
        off = (row % 2) * (bw // 2)
        in_mortar = ((yy % bh) < max(1, bh // 6)) | (((xx + off) % bw) < max(1, bh // 6))
        n = _value_noise(rng, h, w, 16)[..., None]
        img = np.where(in_mortar[..., None], mortar, brick * (0.85 + 0.25 * n))
    elif name == "floor":
        if rng.random() < 0.5:  # wooden planks
            wood = _jitter(rng, (150, 100, 55), 25)
            pw = int(rng.integers(5, 9)) * SUPERSAMPLE // 2
            seam = (xx % pw) < max(1, pw // 8)
            grain = np.sin(yy * 0.3 + _value_noise(rng, h, w, 6) * 6)[..., None]
            img = wood * (0.85 + 0.1 * grain)
            img[seam] *= 0.55
        else:  # checker tiles
            a = _jitter(rng, (225, 220, 210), 15)
            b = _jitter(rng, rng.choice([(60, 60, 70), (150, 120, 90), (110, 130, 150)]), 20)
            ts = int(rng.integers(5, 9)) * SUPERSAMPLE // 2
            chk = ((xx // ts + yy // ts) % 2).astype(bool)[..., None]
            img = np.where(chk, a, b)
    else:
        raise BadConfigError(f"unknown stuff class {name!r}")
    return np.clip(img, 0, 255)


# --------------------------------------------------------------------------- thing shapes


def _shape_polygons(name: str) -> list[list[tuple[float, float]]]:
    """Unit-size outline(s) of a thing, centred at 0, radius about 1."""
    if name == "circle":
        return [[(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 48, endpoint=False)]]
    if name == "square":
        s = 0.8
        return [[(-s, -s), (s, -s), (s, s), (-s, s)]]
    if name == "triangle":
        return [[(math.cos(a), math.sin(a) + 0.15) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]]
    if name == "star":
        pts = []
        for i in range(10):
            r = 1.0 if i % 2 == 0 else 0.42
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return [pts]
    if name == "heart":
        pts = []
        for t in np.linspace(0, 2 * math.pi, 48, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17.0, -y / 17.0 - 0.05))
        return [pts]
    if name == "cross":
        a, b = 0.3, 0.95
        return [
            [
                (-a, -b),
                (a, -b),
                (a, -a),
                (b, -a),
                (b, a),
                (a, a),
                (a, b),
                (-a, b),
                (-a, a),
                (-b, a),
                (-b, -a),
                (-a, -a),
            ]
        ]
    if name == "bow tie":
        return [
            [(-1.0, -0.65), (-0.15, -0.12), (-0.15, 0.12), (-1.0, 0.65)],
            [(1.0, -0.65), (0.15, -0.12), (0.15, 0.12), (1.0, 0.65)],
            [(-0.2, -0.2), (0.2, -0.2), (0.2, 0.2), (-0.2, 0.2)],
        ]
    if name == "crescent moon":  # drawn in _raster_thing as a disc minus an offset disc
        return []
    raise BadConfigError(f"unknown thing class {name!r}")


def _raster_thing(name: str, cx: float, cy: float, radius: float, angle: float, h: int, w: int) -> np.ndarray:
    """A boolean h×w mask of one thing placed at (cx, cy) with radius and rotation."""
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    ca, sa = math.cos(angle), math.sin(angle)
    if name == "crescent moon":
        r = radius
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ox, oy = cx + 0.45 * r * ca, cy + 0.45 * r * sa
        ri = 0.85 * r
        draw.ellipse((ox - ri, oy - ri, ox + ri, oy + ri), fill=0)
    for poly in _shape_polygons(name):
        pts = [(cx + radius * (x * ca - y * sa), cy + radius * (x * sa + y * ca)) for x, y in poly]
        draw.polygon(pts, fill=255)
    return np.asarray(layer) > 127


# A pattern per thing class, drawn in the thing's own frame (it turns with the thing) in a second ink over
# the thing's random colour. Real objects are known by their local appearance as well as their outline;
# with a flat fill a thing's class shows only in an outline 3-7 attention cells wide, and the world models
# could not tell which thing was which (docs/WORLD.md, "Thing patterns"). Periods are in output pixels and
# at least 6, two latent cells, so the VAE keeps them.
THING_PATTERNS = {
    "circle": "plain",
    "square": "checker",
    "triangle": "stripes",
    "star": "dots",
    "heart": "glow",
    "cross": "grid",
    "bow tie": "halves",
    "crescent moon": "rings",
}
_WHITE_INK = {"stripes", "dots", "glow", "rings"}


def pattern_ink(pattern: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """The share of the second ink (0–1) of a pattern at thing-frame coordinates u, v (output pixels)."""
    if pattern == "plain":
        return np.zeros_like(u)
    if pattern == "checker":
        return ((np.floor(u / 4) + np.floor(v / 4)) % 2).astype(np.float32) * 0.8
    if pattern == "stripes":
        return (np.floor(u / 3.5) % 2).astype(np.float32) * 0.8
    if pattern == "dots":
        du, dv = (u % 6) - 3, (v % 6) - 3
        return (du * du + dv * dv < 2.2**2).astype(np.float32) * 0.9
    if pattern == "glow":
        return np.clip(1 - np.hypot(u, v) / (0.75 * radius), 0, 1) * 0.9
    if pattern == "grid":
        return (((u % 6) < 1.5) | ((v % 6) < 1.5)).astype(np.float32) * 0.85
    if pattern == "halves":
        return (u < 0).astype(np.float32) * 0.7
    if pattern == "rings":
        return (np.floor(np.hypot(u, v) / 3) % 2).astype(np.float32) * 0.8
    raise BadConfigError(
        f"unknown thing pattern {pattern!r}; use one of {', '.join(sorted(set(THING_PATTERNS.values())))}"
    )


def _pattern_fill(
    fill: np.ndarray, name: str, colour: str, cx: float, cy: float, radius: float, angle: float
) -> np.ndarray:
    """A thing's h×w×3 fill with its class pattern (supersampled pixels in, supersampled pixels out)."""
    pattern = THING_PATTERNS[name]
    h, w = fill.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = (xx - cx) / SUPERSAMPLE, (yy - cy) / SUPERSAMPLE
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = dx * ca + dy * sa, -dx * sa + dy * ca
    white = pattern in _WHITE_INK
    if colour in ("white", "yellow", "pink") and white:
        white = False  # a light thing gets its pattern in black, a dark one in white
    elif colour == "black" and not white:
        white = True
    ink = np.array([245, 245, 245] if white else [20, 20, 20], np.float32)
    share = pattern_ink(pattern, u, v, radius / SUPERSAMPLE)[..., None]
    return fill * (1 - share) + ink * share


# --------------------------------------------------------------------------- captions


def _thing_phrase(rng: np.random.Generator, name: str, colour: str, size_word: str | None) -> str:
    """A noun phrase for a thing: article, optional size and colour, name."""
    words = [str(rng.choice(THING_ARTICLES))]
    if size_word is not None and rng.random() < 0.5:
        words.append(size_word)
    if rng.random() < 0.85:
        words.append(colour)
    words.append(name)
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words)


def _stuff_phrase(rng: np.random.Generator, name: str) -> str:
    """A noun phrase for a stuff class."""
    art = str(rng.choice(STUFF_ARTICLES))
    return f"{art} {name}".strip()


def make_caption(
    rng: np.random.Generator, things: list[dict], stuff: list[int], omit_p: float = 0.2
) -> tuple[str, list[int]]:
    """A caption naming the scene's things and stuff in random order; returns (caption, named class ids)."""
    items: list[tuple[str, int, str]] = []
    for t in things:
        cid = CLASS_BY_NAME[t["name"]].id
        items.append(("thing", cid, _thing_phrase(rng, t["name"], t["colour"], t["size_word"])))
    for sid in stuff:
        items.append(("stuff", sid, _stuff_phrase(rng, CLASSES[sid - 1].name)))
    # Some captions leave one present class out, so the model learns pixels with no word of their own.
    if len(items) > 1 and rng.random() < omit_p:
        items.pop(int(rng.integers(len(items))))
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    parts: list[str] = []
    for i, (kind, _, phrase) in enumerate(items):
        if i == 0:
            parts.append(phrase)
            continue
        if kind == "stuff" and rng.random() < 0.6:
            link = str(rng.choice(STUFF_LINKS))
            art = phrase.split(" ")[0]
            bare = phrase[len(art) + 1 :] if art in ("the", "some") else phrase
            parts.append(f"{link} {bare}")
        else:
            conn = str(rng.choice(CONNECTORS))
            parts.append(f", {phrase}" if conn == "," else f"{conn} {phrase}")
    text = " ".join(parts).replace(" ,", ",")
    prefix = str(rng.choice(PREFIXES))
    suffix = str(rng.choice(SUFFIXES))
    text = (prefix + " " + text if prefix else text) + suffix
    text = " ".join(text.replace(" ,", ",").split())
    named = sorted({cid for _, cid, _ in items})
    return text, named


# --------------------------------------------------------------------------- scenes


def render_scene(rng: np.random.Generator, size: int = 64, patterns: bool = True) -> Scene:
    """Render one scene of size×size pixels with its exact mask and a caption.

    patterns=False draws every thing in a flat fill (the first world); the layout, colours and captions
    are the same either way, since the patterns draw nothing from rng.
    """
    if size < 16:
        raise BadConfigError(f"scene size must be at least 16 pixels, got {size}")
    ss = SUPERSAMPLE
    h = w = size * ss
    img = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), np.uint8)
    # Stuff layout: an upper and a lower region split by a slightly tilted, wavy horizon, or one region.
    layout = rng.random()
    if layout < 0.45:
        upper, lower = "sky", str(rng.choice(["grass", "water", "grass", "water", "floor"]))
    elif layout < 0.8:
        upper, lower = "wall", str(rng.choice(["floor", "floor", "grass"]))
    else:
        upper, lower = str(rng.choice(STUFF)), None
    if lower is None:
        img[:] = _texture(rng, upper, h, w)
        mask[:] = CLASS_BY_NAME[upper].id
        stuff_ids = [CLASS_BY_NAME[upper].id]
    else:
        xx = np.arange(w, dtype=np.float32)
        y0 = rng.uniform(0.3, 0.7) * h
        tilt = rng.uniform(-0.15, 0.15)
        amp = rng.uniform(0, 0.04) * h if lower in ("grass", "water") else 0.0
        horizon = y0 + tilt * (xx - w / 2) + amp * np.sin(xx / w * rng.uniform(2, 8) + rng.uniform(0, 6))
        below = np.arange(h, dtype=np.float32)[:, None] >= horizon[None, :]
        tex_u, tex_l = _texture(rng, upper, h, w), _texture(rng, lower, h, w)
        img = np.where(below[..., None], tex_l, tex_u)
        mask = np.where(below, CLASS_BY_NAME[lower].id, CLASS_BY_NAME[upper].id).astype(np.uint8)
        stuff_ids = [CLASS_BY_NAME[upper].id, CLASS_BY_NAME[lower].id]
    # Things: 1–4, random shape, colour, size, position, rotation; later ones occlude earlier ones.
    n_things = int(rng.choice([1, 2, 2, 3, 3, 4]))
    things: list[dict] = []
    for _ in range(n_things):
        name = str(rng.choice(THINGS))
        colour = str(rng.choice(list(COLOURS)))
        rel = float(rng.random())
        radius = (THING_RADIUS_MIN + THING_RADIUS_SPAN * rel) * size * ss
        cx = rng.uniform(radius * 0.6, w - radius * 0.6)
        cy = rng.uniform(radius * 0.6, h - radius * 0.6)
        angle = rng.uniform(-math.pi, math.pi) if name != "circle" else 0.0
        shape = _raster_thing(name, cx, cy, radius, angle, h, w)
        shade = 0.85 + 0.3 * _value_noise(rng, h, w, 3)[..., None]
        fill = _jitter(rng, COLOURS[colour], 18) * shade
        if patterns:
            fill = _pattern_fill(fill, name, colour, cx, cy, radius, angle)
        img = np.where(shape[..., None], np.clip(fill, 0, 255), img)
        cid = CLASS_BY_NAME[name].id
        mask = np.where(shape, cid, mask).astype(np.uint8)
        size_word = next((k for k, (lo, hi) in SIZE_WORDS.items() if lo <= rel < hi), None)
        things.append({"name": name, "colour": colour, "size_word": size_word, "id": cid})
    # Downsample: image by box averaging, mask by the majority label of each block (exact at 1 px).
    image = np.asarray(Image.fromarray(img.astype(np.uint8)).resize((size, size), Image.BOX))
    blocks = mask.reshape(size, ss, size, ss).transpose(0, 2, 1, 3).reshape(size, size, ss * ss)
    counts = np.stack([(blocks == c).sum(-1) for c in range(len(CLASSES) + 1)], -1)
    mask_small = counts.argmax(-1).astype(np.uint8)
    present_ids = sorted(int(c) for c in np.unique(mask_small) if c != BACKGROUND_ID)
    # Things hidden by occlusion (or too small to survive downsampling) are neither present nor named.
    visible = [t for t in things if t["id"] in present_ids]
    # One caption item per visible thing instance, stuff only when it survives in the mask.
    caption, named = make_caption(rng, visible, [s for s in stuff_ids if s in present_ids])
    return Scene(
        image=image, mask=mask_small, caption=caption, present=present_ids, named=named, things=visible
    )


def split_seed(split: str, seed: int) -> int:
    """The seed of a split, so that train, val and test never share scenes for the same base seed."""
    offsets = {"train": 0, "val": 1_000_003, "test": 2_000_003}
    if split not in offsets:
        raise BadConfigError(f"unknown split {split!r}; use one of train, val, test")
    return seed + offsets[split]


def render_scenes(split: str, n: int, seed: int = 0, size: int = 64, patterns: bool = True):
    """Yield (index, Scene) for n scenes of a split; scene i depends only on (split, seed, i)."""
    base = split_seed(split, seed)
    for i in range(n):
        rng = np.random.default_rng([base, i])
        yield i, render_scene(rng, size, patterns)


def classes_json() -> dict:
    """The classes.json content of the world."""
    return {
        "classes": [
            {"id": c.id, "name": c.name, "synonyms": list(c.synonyms), "kind": c.kind} for c in CLASSES
        ],
        "ignore_index": IGNORE_INDEX,
        # Stuff covers every pixel, so no mask holds BACKGROUND_ID: null tells readers to score no background class.
        "background_id": None,
    }


def palette() -> list[int]:
    """A 768-entry PNG palette: a distinct colour per class id, white for ignore."""
    rng = np.random.default_rng(7)
    pal = [0, 0, 0] + [int(v) for v in rng.integers(40, 256, 3 * 254)] + [255, 255, 255]
    return pal


MIN_SIZE, MAX_SIZE = 16, 1024  # below, shapes are a few pixels; above, one scene's 4× supersampling is ~GBs


def is_render_folder(folder: Path) -> bool:
    """A split an attnseg from before output manifests rendered (render.json and index.jsonl)."""
    return (folder / "render.json").is_file() and (folder / "index.jsonl").is_file()


def check_render(n: int, size: int) -> None:
    """Refuse a scene count or size that cannot be rendered, before any work."""
    if n <= 0:
        raise BadConfigError(f"--n must be at least 1, got {n}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise BadConfigError(f"--size must lie in {MIN_SIZE}–{MAX_SIZE} pixels, got {size}")


def render_split(
    out: str | Path,
    split: str = "val",
    n: int = 500,
    seed: int = 0,
    size: int = 64,
    progress: bool = True,
    patterns: bool = True,
    overwrite: bool = False,
) -> Path:
    """Render n scenes of a split into out (images/, masks/, index.jsonl, classes.json); return out.

    An existing `out` is replaced only if attnseg rendered it (io.output_folder); with overwrite, the split's
    files are written into any folder and nothing else there is touched.
    """
    check_render(n, size)
    out = Path(out)
    check_output_folder(out, overwrite, is_render_folder)
    with output_folder(out, overwrite, is_render_folder) as stage:
        (stage / "images").mkdir()
        (stage / "masks").mkdir()
        pal = palette()
        lines = []
        it = render_scenes(split, n, seed, size, patterns)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=n, desc=f"render {split}")
        for i, scene in it:
            sid = f"{i:06d}"
            Image.fromarray(scene.image).save(stage / "images" / f"{sid}.png")
            m = Image.fromarray(scene.mask).convert("P")  # L→P keeps index = value; the palette is set next
            m.putpalette(pal)
            m.save(stage / "masks" / f"{sid}.png")
            lines.append(
                json.dumps(
                    {
                        "id": sid,
                        "image": f"images/{sid}.png",
                        "mask": f"masks/{sid}.png",
                        "caption": scene.caption,
                        "present": scene.present,
                    }
                )
            )
        (stage / "index.jsonl").write_text("\n".join(lines) + "\n")
        (stage / "classes.json").write_text(json.dumps(classes_json(), indent=1) + "\n")
        (stage / "render.json").write_text(
            json.dumps({"split": split, "n": n, "seed": seed, "size": size, "thing_patterns": patterns})
            + "\n"
        )
    return out


def add_render_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of `world render` to a parser."""
    from attnseg.cli import seed_int

    p.add_argument("--split", choices=["train", "val", "test"], default="val", help="which split's scenes")
    p.add_argument("--n", type=int, default=500, help="number of scenes")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the split's scene generator")
    p.add_argument(
        "--size",
        type=int,
        default=64,
        help=f"image side in pixels, {MIN_SIZE}–{MAX_SIZE} (the models see 64)",
    )
    p.add_argument(
        "--out", required=True, help="output folder; replaced only if attnseg rendered it (else refused)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write the split into a folder attnseg did not write (files with the split's names are replaced)",
    )
    p.add_argument(
        "--plain-things",
        action="store_true",
        help="flat-filled things without their class pattern (the first world)",
    )


def run_render(args: argparse.Namespace) -> int:
    """Run `world render` from parsed arguments."""
    out = render_split(
        args.out,
        args.split,
        args.n,
        args.seed,
        args.size,
        patterns=not args.plain_things,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.n} {args.split} scenes to {out}")
    return 0
