"""Image-prompt studio: a text prompt plus a reference image, with a strength for how much carries over.

Composition root only: parse flags, build one engine, compose the tabs, launch. `app.demo` (for `gradio app.py`
and tests) is built on first access, without loading weights or launching; `python app.py` builds its UI once.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

try:  # Hugging Face ZeroGPU: `spaces` must be imported before torch initialises CUDA
    import spaces
except ImportError:
    spaces = None

import gradio as gr
import torch

import pipelines
from pipelines import ImagePromptError, load_families, load_mode_presets
from pipelines.parameters import parameters_for
from pipelines.presets import FamilySpec, ModePreset
from ui import anime, face, general, style
from ui.common import PAGE_CSS
from ui.egress import install_url_safety, quiet
from ui.endpoints import Studio
from ui.loader import load_settings_panel
from ui.mcp import door_middleware, install_mcp
from ui.serving import GATE, GRADIO_CACHE_LIMITS
from ui.stop import cancel_middleware
from ui.tab import TabHandle
from ui.uploads import UPLOADS

if TYPE_CHECKING:  # the engine module loads on first use (pipelines.Engine): the page is served before that
    from pipelines.engine import Engine

FAMILY_ENV = "IMAGE_PROMPT_MODELS"  # default family for Spaces, where flags cannot be passed
QUEUE_SIZE = 64  # requests waiting beyond this are refused with "queue is full" (one client holds at most 3)
MAX_FILE_SIZE = "25mb"  # uploads over this are refused before they reach the app
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

FAMILIES = load_families()
PRESETS = load_mode_presets(FAMILIES)


def default_family() -> str:
    """$IMAGE_PROMPT_MODELS, else SDXL on a CUDA GPU and SD1.5 without one."""
    return os.environ.get(FAMILY_ENV) or ("sdxl" if torch.cuda.is_available() else "sd15")


TABS = (
    ("general", "General", general),
    ("face", "Consistent face", face),
    ("anime", "Anime character", anime),
    ("style", "Style", style),
)


def create_app(engine: Engine, presets: dict[str, dict[str, ModePreset]] = PRESETS) -> gr.Blocks:
    """All tabs on one engine, and a settings loader that fills whichever tab a file belongs to."""
    family = engine.family.name
    studio = Studio.of(engine)  # what the tabs call: generate, sweep, preview, score
    with gr.Blocks(title="Image-prompt studio", delete_cache=GRADIO_CACHE_LIMITS) as demo:
        # First, while the page is empty: Gradio rebuilds its whole app config for each `queue()`.
        demo.queue(max_size=QUEUE_SIZE)
        gr.Markdown(
            f"# Image-prompt studio\nA text prompt plus a reference image. Strength decides how much of the "
            f"reference carries over. Models: the **{family}** family on {engine.device}; each result says which "
            "base model drew it."
        )
        handles: list[TabHandle] = []
        with gr.Tabs() as tabs:
            for mode, title, module in TABS:
                if family not in presets[mode]:
                    continue  # models.toml: this family does not offer the mode
                with gr.Tab(title, id=mode, elem_id=f"tab-{mode}"):
                    handles.append(module.create_demo(studio, presets[mode][family]))
        load_settings_panel(presets, family, handles, tabs)
        offered = [title for mode, title, _ in TABS if family in presets[mode]]
        for mode, title, _ in TABS:
            if family not in presets[mode]:
                unavailable_endpoints(mode, title, engine.family, offered)
    install_mcp()  # images, sessions and logins for the MCP tools (ui/mcp.py); nothing changes while MCP is off
    GATE.install(demo)  # one client holds a few queued jobs at most; others still get in while it floods
    return demo


def unavailable_endpoints(mode: str, title: str, family: FamilySpec, offered: list[str]) -> None:
    """A tab this family does not offer still answers on its API names, in one line that says why."""
    message = (
        f"The {title} tab is not available with the {family.name} family ({family.pipeline.upper()}): it offers "
        f"{', '.join(offered)}. Start the app with another family (--models) for it."
    )
    for role, suffix in (("single", ""), ("compare", "_compare")):
        names = parameters_for(mode, role)

        def refuse(*args: Any, **kwargs: Any) -> str:
            raise gr.Error(message, print_exception=False)

        refuse.__signature__ = inspect.Signature(  # type: ignore[attr-defined] - gr.api reads the signature
            [
                inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Any)
                for n in names
            ],
            return_annotation=str,
        )
        refuse.__annotations__ = {n: Any for n in names} | {"return": str}
        gr.api(refuse, api_name=f"{mode}{suffix}", api_description=message)


def launch_options(forwarded_allow_ips: str = "") -> dict:
    """Safe serving: clean error messages, no file access beyond the app's own temp files, bounded uploads (per file,
    and per visitor: ui/uploads.py), the middleware that tells the gate which clients still listen for their
    results (see ui/serving.py), and `X-Forwarded-For` believed only from `forwarded_allow_ips` (comma-separated
    addresses or networks of the proxies in front; none by default: uvicorn would trust loopback, so any local
    client could choose its own address).

    A fresh dict per launch: Gradio adds to `app_kwargs` when it builds the server.
    """
    # Gradio builds uvicorn's Config without this setting: uvicorn then reads it from the environment.
    os.environ["FORWARDED_ALLOW_IPS"] = forwarded_allow_ips
    install_url_safety()  # Gradio's own URL downloads use the same public-address rule as the MCP door
    return {
        "css": PAGE_CSS,
        "show_error": True,
        "allowed_paths": [],
        "max_file_size": MAX_FILE_SIZE,
        "app_kwargs": {"middleware": [GATE.middleware(), UPLOADS.middleware(), door_middleware(), cancel_middleware()]},
    }


def check_block_maps(engine: Engine) -> None:
    """Every preset block map must address layers this UNet has (diffusers would silently ignore the rest)."""
    for mode, by_family in PRESETS.items():
        preset = by_family.get(engine.family.name)
        for name, block_map in ((preset.block_maps if preset else None) or {}).items():
            try:
                engine.block_weights(block_map)
            except ImagePromptError as e:
                raise type(e)(f"presets/{mode}.toml: [{engine.family.name}].block_maps.{name}: {e}") from e


def _max_batch(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a whole number of at least 1")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        choices=sorted(FAMILIES),
        default=None,
        help=f"model family (default: ${FAMILY_ENV}, else sdxl with a CUDA GPU, sd15 without); "
        "'tiny' runs offline on generated random weights",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for a LAN)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument(
        "--forwarded-allow-ips", default="", metavar="ADDRESSES",
        help="the reverse proxies whose X-Forwarded-For names the visitor (comma-separated IPs or networks); "
        "default: none, each connection's own address counts",
    )  # fmt: skip
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--auth", metavar="USER:PASS", help="require this login (recommended with --share)")
    parser.add_argument(
        "--mcp",
        action="store_true",
        help="also serve the endpoints as MCP tools (on a Space: GRADIO_MCP_SERVER=True)",
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="auto", help="auto: bf16 (or fp16) on a GPU, fp32 on CPU"
    )
    parser.add_argument("--offload", action="store_true", help="model CPU offload: less GPU memory, a bit slower")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow first image)")
    parser.add_argument(
        "--max-batch", type=_max_batch, default="auto",
        help="images per denoising pass in comparisons; auto (default): chosen by timing this device at each size",
    )  # fmt: skip
    parser.add_argument(
        "--max-bases", type=int, default=1, help="base models kept in memory (a request for another one swaps it in)"
    )
    args = parser.parse_args(argv)
    if args.auth is not None and ":" not in args.auth:
        parser.error("--auth takes USER:PASS")
    if args.max_bases < 1:
        parser.error("--max-bases must be at least 1")
    if args.offload and not torch.cuda.is_available():
        parser.error("--offload moves models to and from a CUDA GPU; this machine has none")
    return args


def _validate_family(name: str) -> FamilySpec:
    if name not in FAMILIES:
        raise SystemExit(f"Unknown model family {name!r} (from ${FAMILY_ENV}); choose one of {sorted(FAMILIES)}.")
    return FAMILIES[name]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()  # nothing reaches the network that nobody asked for (ui/egress.py)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    family = _validate_family(args.models or default_family())
    engine = pipelines.Engine(
        family, dtype=DTYPES[args.dtype], offload=args.offload, compile=args.compile,
        max_batch=None if args.max_batch == "auto" else args.max_batch,
        max_bases=args.max_bases, measure_when_idle=spaces is None,  # ZeroGPU: the GPU only inside a request
    )  # fmt: skip
    app = create_app(engine)
    if args.share:
        print("Sharing: the gradio.live link is public; anyone with it can use this app and your GPU.")
        if not args.auth:
            print("Tip: add --auth USER:PASS to ask for a login.")
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    mcp = True if args.mcp else None  # None: Gradio reads GRADIO_MCP_SERVER (how a Space turns it on)
    # The page is served at once while the models load (a request waits for them under the engine lock); a model
    # that cannot be had still stops the app with one clear message.
    failure: list[ImagePromptError] = []
    stop_on_sigterm()
    warm = threading.Thread(target=lambda: failure.extend(warm_up(engine)), name="warm-up", daemon=True)
    app.launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth, mcp_server=mcp,
        prevent_thread_lock=True, **launch_options(args.forwarded_allow_ips),
    )  # fmt: skip
    warm.start()  # once the page answers: the models' imports would hold the GIL the server's start needs
    try:
        warm.join()
    except KeyboardInterrupt:  # stopped while the models load
        app.close()
        return 0
    if failure:
        print(f"error: {failure[0]}", file=sys.stderr)
        app.close()
        return 2
    app.block_thread()  # returns on Ctrl+C or SIGTERM, after closing the server; atexit then removes our files
    return 0


def stop_on_sigterm() -> None:
    """SIGTERM (a container stop, `systemctl stop`, `kill`) shuts down as Ctrl+C does: the server closes and the
    result folder is removed at exit (without this, Python dies at once and leaves it in the temp directory)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def warm_up(engine: Engine) -> list[ImagePromptError]:
    """Load the base, check the block maps, load the default adapter and the face pack: the first click draws at
    once. Returns the error that stops the app, if any (a missing face pack only disables its tab)."""
    family = engine.family
    try:
        engine.load()
        check_block_maps(engine)
        engine.use_variant(PRESETS["general"][family.name].variant)
    except ImagePromptError as e:
        return [e]
    if engine.max_batch is None and engine.measure_when_idle:  # the default comparison's curve, before any visitor
        preset = PRESETS["general"][family.name]
        engine.calibrate(pipelines.build_request(preset, prompt="", seed=0), len(preset.compare))
    if family.faces is not None:
        try:
            engine.face_analyzer().load()  # insightface downloads its pack on first use: do it before any click
        except ImagePromptError as e:
            print(f"warning: the Consistent face tab will not work: {e}", file=sys.stderr)
    if engine.scorer.available:
        try:
            with engine.lock:
                engine.scorer.text_tower()  # the scored comparisons' text tower: downloaded before any click
        except ImagePromptError as e:
            print(f"warning: comparisons will not be scored: {e}", file=sys.stderr)
    return []


_demo: gr.Blocks | None = None  # built on first access of `app.demo`: `python app.py` builds only its own UI
_demo_engine: Engine | None = None


def __getattr__(name: str) -> gr.Blocks:
    """`app.demo` (for `gradio app.py`, Spaces tooling and tests) is built when first asked for, without weights."""
    global _demo, _demo_engine
    if name != "demo":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _demo is None:
        # Weights load on the first request; on ZeroGPU nothing runs on the device outside a request.
        _demo_engine = pipelines.Engine(_validate_family(default_family()), measure_when_idle=spaces is None)
        _demo = create_app(_demo_engine)
    return _demo


def demo_engine_loaded() -> bool:
    """Whether the `demo` built on access has loaded weights yet (it should not have, until a request)."""
    return _demo_engine is not None and _demo_engine.loaded


if __name__ == "__main__":
    sys.exit(main())
