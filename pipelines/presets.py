"""Presets: TOML files in `presets/`, read once at start-up into frozen, validated dataclasses.

An invalid value stops the app with the file, the key, the value and what is allowed, e.g.
`presets/general.toml: [sdxl].strength.default = 3.0 is outside [0.0, 1.5]`. Nothing falls back silently.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from .errors import InvalidRequestError, PresetError


@dataclass(frozen=True)
class FaceSpec:
    """Which insightface model pack the face mode loads: `FaceAnalysis(name=pack, root=root)` (`pipelines.face`)."""

    pack: str
    root: str | None  # None: insightface's default (~/.insightface), which downloads the pack when missing


PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
MODES = ("general", "face", "anime", "style")  # one TOML file per mode
PIPELINE_KINDS = ("sdxl", "sd15", "flux", "flux2", "flux2-kv")
SOURCES = ("hub", "tiny", "local")  # local: a folder mirror of the Hub layout (dry runs)
EMBED_KINDS = ("pooled", "hidden", "faceid", "faceid-plus", "redux", "reference")  # what feeds the adapter
# ("reference": the base reads the images in context, as extra latent tokens: FLUX.2 [klein])
CROP_MODES = ("center", "pad", "squash")  # how a non-square reference becomes the encoder's square input
MAX_COMPARE = 16  # strengths in one comparison (per axis)
# What the scoring text tower loads from its repository (config, weights, tokenizer).
SCORING_TEXT_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "special_tokens_map.json",
                      "vocab.json", "merges.txt")  # fmt: skip
FAST_SCHEDULERS = ("EulerDiscreteScheduler", "DDIMScheduler", "LCMScheduler", "TCDScheduler")
SPEEDS = ("quality", "fast")
MAX_GRID_CELLS = 25  # cells of a 2-D comparison (5 x 5)
REGIONS = ("whole", "left", "right", "top", "bottom")  # where an image prompt acts
EXTRA_MODES = ("none", "general", "face", "style")  # `extra_mode`: the shorthand for one added image prompt
SLOT_MODES = ("general", "face", "style")  # kinds of image prompt a request can add after the tab's own
# Kinds of slot that give structure instead of a look: ControlNets fed a map the app makes of a photo (edges, depth,
# ...) or a ready control map, and a start image (img2img). Each is a table of presets/structure.toml, in its order:
# its label, what its strength means, the map its ControlNet reads and the models that make it, its defaults.


@functools.cache
def _kind_file(name: str) -> dict[str, Any]:
    """A presets file as parsed, for the kinds' names and texts: read once, never changed (the presets' own readers
    parse their files anew)."""
    return tomllib.loads((PRESET_DIR / name).read_text(encoding="utf-8"))


STRUCTURE_KINDS = tuple(_kind_file("structure.toml"))


@dataclass(frozen=True)
class ArchitectureFacts:
    """What an architecture's passes can do, in one place (the codec, the presets and `pipelines/arch/` read it)."""

    regions: bool  # an image prompt may act on part of the image (a mask in its attention)
    structure: bool  # its ControlNet and img2img pipelines are wired (structure slots)


ARCHITECTURES = {
    "sdxl": ArchitectureFacts(regions=True, structure=True),
    "sd15": ArchitectureFacts(regions=True, structure=True),
    "flux": ArchitectureFacts(regions=False, structure=False),  # FLUX's processor takes no mask; no ControlNet yet
    "flux2": ArchitectureFacts(regions=False, structure=False),  # references in context: no mask, no ControlNet yet
    "flux2-kv": ArchitectureFacts(regions=False, structure=False),  # the same, its references' keys and values cached
}
CONTROL_TYPES = ("canny", "depth", "pose", "scribble", "lineart", "normal", "segment")  # what a control map shows

# Hard limits that no preset may widen: they protect the server, whatever a preset says.
HARD_LIMITS = {
    "strength": (0.0, 2.0),
    "stop_at": (0.0, 1.0),
    "start_at": (0.0, 1.0),
    "structure": (0.0, 3.0),
    "steps": (1, 150),
    "guidance": (0.0, 30.0),
    "width": (32, 2048),
    "height": (32, 2048),
}


@dataclass(frozen=True)
class ImageEncoderSpec:
    """A CLIP vision tower: `CLIPVisionModelWithProjection.from_pretrained(repo, subfolder=...)`."""

    repo: str
    subfolder: str


@dataclass(frozen=True)
class AdapterSpec:
    """One IP-Adapter checkpoint: `load_ip_adapter(repo, subfolder=..., weight_name=...)`."""

    name: str
    repo: str
    subfolder: str
    weight_name: str
    image_encoder: ImageEncoderSpec | None  # None: FaceID (fed by insightface embeddings only)
    embeds: str  # "pooled" (plain), "hidden" (Plus), "faceid" or "faceid-plus" (FaceID Plus: both)
    lora_weight: float = 0.0  # weight of the LoRA inside the checkpoint (FaceID); 0 leaves it off
    face_crop_channels: str = "bgr"  # FaceID Plus: channel order of the aligned crop given to CLIP (see models.toml)
    layer_ramp: tuple[float, float] | None = None  # layer weights from the first to the last adapter layer (XLabs)
    true_cfg: float = 1.0  # FLUX: true classifier-free guidance with this adapter (> 1: a second, negative pass)
    max_images: int = 0  # in-context references: the most reference images the model takes in one image (0: any)

    @property
    def uses_faces(self) -> bool:
        """FaceID kinds: fed by insightface embeddings of the reference faces."""
        return self.embeds.startswith("faceid")

    @property
    def id(self) -> str:
        """The stable identifier written into PNG metadata."""
        return "/".join(p for p in (self.repo, self.subfolder, self.weight_name) if p)


@dataclass(frozen=True)
class ScoringSpec:
    """What scores a comparison: the adapters' CLIP image encoder and the text half of the same CLIP model."""

    image_encoder: ImageEncoderSpec
    text_encoder: str  # a CLIP checkpoint whose text tower `CLIPTextModelWithProjection.from_pretrained` reads


@dataclass(frozen=True)
class FastSpec:
    """Fast mode: a few-step LoRA for the base, and the sampling its authors give it."""

    repo: str
    weight_name: str
    steps: int
    guidance: float  # <= 1: no classifier-free guidance (one UNet row per image)
    scheduler: str  # a diffusers scheduler class, made from the base's scheduler config
    timestep_spacing: str
    strength_scale: float = 1.0  # the image prompt's strength in fast mode = strength x this

    @property
    def id(self) -> str:
        return f"{self.repo}/{self.weight_name}"


@dataclass(frozen=True)
class ControlNetSpec:
    """A ControlNet for one control type: `ControlNetModel` / `ControlNetUnionModel.from_pretrained(repo, ...)`."""

    control_type: str
    repo: str
    subfolder: str = ""
    union_mode: int | None = None  # ControlNet-Union: the control type's index in the model (None: one-type model)

    @property
    def id(self) -> str:
        """The stable identifier written into PNG metadata."""
        return "/".join(p for p in (self.repo, self.subfolder) if p)


@dataclass(frozen=True)
class FamilySpec:
    """A model family: one base pipeline and the adapters that fit it."""

    name: str
    pipeline: str  # "sdxl" or "sd15"
    source: str  # "hub" or "tiny"
    base: str
    adapters: dict[str, AdapterSpec]
    alt_bases: dict[str, str] = field(default_factory=dict)  # e.g. {"anime": "<repo>"}: same architecture
    faces: FaceSpec | None = None  # the insightface pack for the face mode
    weights_variant: str | None = None  # e.g. "fp16": the files to load when running in half precision
    vae_fp16: str | None = None  # a VAE that is safe in fp16 (SDXL), used when running in fp16
    scoring: ScoringSpec | None = None  # scored comparisons (likeness, adherence)
    fast: FastSpec | None = None  # fast mode (a few-step LoRA)
    modes: tuple[str, ...] = MODES  # the tabs this family offers (one without a face adapter has no face mode)
    defaults: dict[str, Any] = field(default_factory=dict)  # what every mode's preset starts from (steps, size...)
    controlnets: dict[str, ControlNetSpec] = field(default_factory=dict)  # control type -> its ControlNet
    depth_model: str | None = None  # the depth estimator of "depth" slots (transformers, AutoModelForDepthEstimation)
    # The models a structure kind's map is made with, by the kind's `preprocessor` (presets/structure.toml): each a
    # transformers folder (model, config, image processor); "depth" is `depth_model`.
    preprocessors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notice: str = ""  # the family's licence notice, shown in each of its tabs

    def hub_checkpoints(self) -> list[tuple[str, str | None]]:
        """Every (repository, file or None for a whole pipeline folder) this family loads, for Space preloading."""
        out: list[tuple[str, str | None]] = [(repo, None) for repo in self.bases.values()]
        if self.vae_fp16:
            out.append((self.vae_fp16, None))
        for spec in self.adapters.values():  # (Redux: a pipeline folder of its own, read whole)
            if spec.embeds == "reference":  # the base itself reads the references
                continue
            out.append((spec.repo, "/".join(p for p in (spec.subfolder, spec.weight_name) if p) or None))
            if spec.image_encoder is not None:
                out.append((spec.image_encoder.repo, spec.image_encoder.subfolder + "/"))
        if self.fast is not None:
            out.append((self.fast.repo, self.fast.weight_name))
        for spec in self.controlnets.values():  # the config and the one weights file from_pretrained reads
            folder = spec.subfolder + "/" if spec.subfolder else ""
            out += [(spec.repo, f"{folder}config.json"), (spec.repo, f"{folder}diffusion_pytorch_model.safetensors")]
        for repos in self.preprocessors.values():  # transformers' files: model, its config, the image processor's
            out += [
                (repo, f) for repo in repos for f in ("config.json", "model.safetensors", "preprocessor_config.json")
            ]
        if self.scoring is not None:  # the text tower's files only (the repository also holds OpenCLIP copies)
            out += [(self.scoring.text_encoder, f) for f in SCORING_TEXT_FILES]
        return list(dict.fromkeys(out))

    @property
    def bases(self) -> dict[str, str]:
        """Every base this family can run on: "default" and the alternatives."""
        return {"default": self.base, **self.alt_bases}


@dataclass(frozen=True)
class Range:
    """A slider: default value and inclusive bounds (checked here: a bad preset cannot be built)."""

    default: float
    min: float
    max: float
    step: float

    def __post_init__(self) -> None:
        if not self.min <= self.default <= self.max:
            raise ValueError(f"default = {self.default} is outside [{self.min}, {self.max}]")
        if self.step <= 0:
            raise ValueError(f"step = {self.step} must be positive")

    def check(self, value: float, name: str) -> float:
        """Return `value` if inside the bounds, else raise with the allowed range."""
        if value != value:  # NaN: comparisons below would all be false
            raise InvalidRequestError(name, f"{name} must be a number, got NaN")
        if not self.min <= value <= self.max:
            raise InvalidRequestError(name, f"{name} = {value} is outside [{self.min}, {self.max}]")
        return value


def _check_compare(compare: tuple[float, ...], strength: Range) -> None:
    """A comparison's default strengths: 1 to MAX_COMPARE, each inside the strength range."""
    if not 1 <= len(compare) <= MAX_COMPARE or not all(strength.min <= v <= strength.max for v in compare):
        raise ValueError(
            f"compare = {list(compare)!r} must be 1 to {MAX_COMPARE} numbers inside [{strength.min}, {strength.max}]"
        )


@dataclass(frozen=True)
class ModePreset:
    """A mode's defaults for one family."""

    mode: str
    family: str
    variant: str
    variants: tuple[str, ...]
    negative_prompt: str
    strength: Range
    steps: Range
    guidance: Range
    width: Range
    height: Range
    examples: tuple[str, ...]
    max_pixels: int  # width x height budget of one image
    stop_at: Range  # fraction of the denoising steps during which the image prompt acts
    crop: str  # default of CROP_MODES
    compare: tuple[float, ...]  # default strengths of the comparison panel
    prompt_template: str = "{prompt}"  # the user's prompt is placed at {prompt}
    block_maps: dict[str, dict] | None = None  # InstantStyle: {"style": {...}, "layout": {...}}
    structure: Range | None = None  # FaceID Plus: s_scale
    bases: tuple[str, ...] = ("default",)  # the family's base pipelines a request may name
    fast: FastSpec | None = None  # the family's fast mode, if it has one
    pipeline: str = "sdxl"  # the family's architecture (pipelines/arch/)
    intro: str = ""  # the tab's introduction for this family, when its way of taking images differs (else the tab's)

    def __post_init__(self) -> None:
        """Checks that tie fields together (each message names its key; the loader adds file and family)."""
        if self.variant not in self.variants:
            raise ValueError(f"variant = {self.variant!r} is not one of {list(self.variants)}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop = {self.crop!r} is not one of {list(CROP_MODES)}")
        if not 32 * 32 <= self.max_pixels <= 2048 * 2048:
            raise ValueError(f"max_pixels = {self.max_pixels!r} must be an integer in [1024, 4194304]")
        _check_compare(self.compare, self.strength)
        if "{prompt}" not in self.prompt_template:
            raise ValueError(f"prompt_template = {self.prompt_template!r} must contain {{prompt}}")
        if self.block_maps is not None and (not isinstance(self.block_maps, dict) or "style" not in self.block_maps):
            raise ValueError("block_maps must be a table with a 'style' map")


@dataclass(frozen=True)
class StructurePreset:
    """A structure slot's defaults (presets/structure.toml): read where a slot is built, like a ModePreset.

    It answers the same questions an image prompt's preset does (strength range, window, crop, comparison), and has
    no adapter: `variants` is empty-named.
    """

    mode: str  # one of STRUCTURE_KINDS
    family: str
    strength: Range  # ControlNet: its conditioning scale; start: the share of the start image that carries over
    stop_at: Range
    crop: str  # how the slot's image is fitted to the output size
    compare: tuple[float, ...]
    control_types: tuple[str, ...]  # what this family can feed ("control" chooses one; canny/depth are fixed)
    canny_thresholds: tuple[int, int] = (100, 200)  # OpenCV Canny's low and high hysteresis thresholds
    label: str = ""  # how a person reads the kind ("Edges of a photo")
    info: str = ""  # what its strength means, in a sentence
    api: str = ""  # what it takes and does, for the API's description of `slots`
    map_type: str | None = None  # the map the app makes for its ControlNet (None: given, or no ControlNet)
    controlnet: bool = True  # False: a start image (img2img), no ControlNet
    preprocessor: str | None = None  # the family's `preprocessors` entry that makes its map, if it needs models
    settings: dict[str, Any] = field(default_factory=dict)  # the kind's own numbers (detection thresholds, ...)
    variant: str = ""
    variants: tuple[str, ...] = ("",)
    block_maps: None = None
    structure: None = None

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop = {self.crop!r} is not one of {list(CROP_MODES)}")
        _check_compare(self.compare, self.strength)
        low, high = self.canny_thresholds
        if not 0 <= low < high <= 1000:
            raise ValueError(f"canny_thresholds = {list(self.canny_thresholds)} must be 0 <= low < high <= 1000")


class _Table:
    """Strict reader of one TOML table that reports errors with their file and key path."""

    def __init__(self, data: Any, where: str, path: str, origins: dict[str, tuple[str, str]] | None = None) -> None:
        if not isinstance(data, dict):
            raise PresetError(f"{where}: {path} must be a table, got {data!r}")
        self.data, self.where, self.path = data, where, path
        self.origins = origins or {}  # key -> (file, table) it came from, when merged from several tables
        self.used: set[str] = set()

    def _origin(self, key: str) -> tuple[str, str]:
        return self.origins.get(key, (self.where, self.path))

    def _key(self, key: str) -> str:
        return f"{self._origin(key)[1]}.{key}"

    def at(self, key: str) -> str:
        """Where `key` is written: "presets/general.toml: [sdxl].strength"."""
        where, path = self._origin(key)
        return f"{where}: {path}.{key}"

    def get(self, key: str) -> Any:
        if key not in self.data:
            raise PresetError(f"{self.at(key)} is missing")
        self.used.add(key)
        return self.data[key]

    def has(self, key: str) -> bool:
        return key in self.data

    def text(self, key: str, choices: tuple[str, ...] | None = None) -> str:
        value = self.get(key)
        if not isinstance(value, str):
            raise PresetError(f"{self.at(key)} = {value!r} must be a string")
        if choices is not None and value not in choices:
            raise PresetError(f"{self.at(key)} = {value!r} is not one of {list(choices)}")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PresetError(f"{self.at(key)} = {value!r} must be a list of strings")
        return tuple(value)

    def table(self, key: str) -> _Table:
        return _Table(self.get(key), self._origin(key)[0], self._key(key))

    def range(self, key: str, integer: bool = False) -> Range:
        t = self.table(key)
        lo_hard, hi_hard = HARD_LIMITS[key]
        values = {}
        for part in ("default", "min", "max", "step"):
            v = t.get(part)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
                kind = "an integer" if integer else "a number"
                raise PresetError(f"{t.at(part)} = {v!r} must be {kind}")
            values[part] = v
        t.done()
        if not lo_hard <= values["min"] <= values["max"] <= hi_hard:
            raise PresetError(
                f"{t.where}: {t.path} bounds [{values['min']}, {values['max']}] must lie inside "
                f"[{lo_hard}, {hi_hard}] with min <= max"
            )
        try:
            return Range(**values)
        except ValueError as e:
            raise PresetError(f"{t.where}: {t.path}.{e}") from None

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise PresetError(f"{self.where}: {self.path} has unknown keys {unknown}")


def _read(path: Path) -> tuple[dict, str]:
    where = f"presets/{path.name}"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), where
    except FileNotFoundError as e:
        raise PresetError(f"{where}: file not found") from e
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{where}: invalid TOML: {e}") from e


def load_families(preset_dir: Path = PRESET_DIR) -> dict[str, FamilySpec]:
    """Read and validate `models.toml`."""
    data, where = _read(preset_dir / "models.toml")
    families = {}
    for name, raw in data.items():
        t = _Table(raw, where, f"[{name}]")
        encoders = {}
        enc_table = t.table("image_encoders")
        for enc_name in list(enc_table.data):
            e = enc_table.table(enc_name)
            encoders[enc_name] = ImageEncoderSpec(repo=e.text("repo"), subfolder=e.text("subfolder"))
            e.done()
        enc_table.done()
        adapters = {}
        ad_table = t.table("adapters")
        for ad_name in list(ad_table.data):
            a = ad_table.table(ad_name)
            embeds = a.text("embeds", EMBED_KINDS)
            needs_encoder = embeds not in ("faceid", "redux", "reference")  # Redux: its own SigLIP; references:
            # the base's own autoencoder
            if needs_encoder or a.has("image_encoder"):
                encoder = encoders[a.text("image_encoder", tuple(encoders))]
            else:
                encoder = None
            lora_weight = a.get("lora_weight") if a.has("lora_weight") else 0.0
            if isinstance(lora_weight, bool) or not isinstance(lora_weight, (int, float)) or not 0 <= lora_weight <= 2:
                raise PresetError(f"{where}: {a._key('lora_weight')} = {lora_weight!r} is outside [0, 2]")
            adapters[ad_name] = AdapterSpec(
                name=ad_name,
                repo=a.text("repo"),
                subfolder=a.text("subfolder"),
                weight_name=a.text("weight_name"),
                image_encoder=encoder,
                embeds=embeds,
                lora_weight=float(lora_weight),
                face_crop_channels=a.text("face_crop_channels", ("bgr", "rgb"))
                if a.has("face_crop_channels")
                else "bgr",
                layer_ramp=_ramp(a) if a.has("layer_ramp") else None,
                true_cfg=_true_cfg(a) if a.has("true_cfg") else 1.0,
                max_images=_max_images(a) if a.has("max_images") else 0,
            )
            a.done()
        ad_table.done()
        faces = None
        if t.has("faces"):
            f = t.table("faces")
            faces = FaceSpec(pack=f.text("pack"), root=f.text("root") or None)
            f.done()
        alt_bases = {}
        if t.has("alt_bases"):
            alt = t.table("alt_bases")
            alt_bases = {key: alt.text(key) for key in list(alt.data)}
            alt.done()
        scoring = None
        if t.has("scoring"):
            sc = t.table("scoring")
            scoring = ScoringSpec(encoders[sc.text("image_encoder", tuple(encoders))], sc.text("text_encoder"))
            sc.done()
        fast = None
        if t.has("fast"):
            fa = t.table("fast")
            steps, guidance, scale = fa.get("steps"), fa.get("guidance"), fa.get("strength_scale")
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 50:
                raise PresetError(f"{where}: {fa._key('steps')} = {steps!r} must be a whole number in [1, 50]")
            for key, value, hi in (("guidance", guidance, 30.0), ("strength_scale", scale, 4.0)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi:
                    raise PresetError(f"{where}: {fa._key(key)} = {value!r} must be a number in [0, {hi}]")
            fast = FastSpec(
                repo=fa.text("repo"), weight_name=fa.text("weight_name"), steps=steps, guidance=float(guidance),
                scheduler=fa.text("scheduler", FAST_SCHEDULERS), timestep_spacing=fa.text("timestep_spacing"),
                strength_scale=float(scale),
            )  # fmt: skip
            fa.done()
        controlnets = {}
        if t.has("controlnets"):
            cn = t.table("controlnets")
            for control_type in list(cn.data):
                if control_type not in CONTROL_TYPES:
                    raise PresetError(f"{cn.at(control_type)}: {control_type!r} is not one of {list(CONTROL_TYPES)}")
                c = cn.table(control_type)
                mode = c.get("union_mode") if c.has("union_mode") else None
                if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode < 16):
                    raise PresetError(f"{c.at('union_mode')} = {mode!r} must be a whole number in [0, 15]")
                controlnets[control_type] = ControlNetSpec(
                    control_type, c.text("repo"), c.text("subfolder") if c.has("subfolder") else "", mode
                )
                c.done()
            cn.done()
        depth_model = t.text("depth_model") if t.has("depth_model") else None
        preprocessors = {"depth": (depth_model,)} if depth_model else {}
        if t.has("preprocessors"):
            pre = t.table("preprocessors")
            preprocessors |= {kind: pre.texts(kind) for kind in list(pre.data)}
            pre.done()
        families[name] = FamilySpec(
            controlnets=controlnets,
            depth_model=depth_model,
            preprocessors=preprocessors,
            name=name,
            pipeline=t.text("pipeline", PIPELINE_KINDS),
            source=t.text("source", SOURCES),
            base=t.text("base"),
            adapters=adapters,
            alt_bases=alt_bases,
            faces=faces,
            weights_variant=t.text("weights_variant") if t.has("weights_variant") else None,
            vae_fp16=t.text("vae_fp16") if t.has("vae_fp16") else None,
            scoring=scoring,
            fast=fast,
            modes=_modes(t),
            defaults=t.get("defaults") if t.has("defaults") else {},
            notice=t.text("notice") if t.has("notice") else "",
        )
        t.done()
    return families


def _max_images(t: _Table) -> int:
    value = t.get("max_images")
    if type(value) is not int or not 1 <= value <= 16:
        raise PresetError(f"{t.at('max_images')} = {value!r} must be a whole number in [1, 16]")
    return value


def _true_cfg(t: _Table) -> float:
    value = t.get("true_cfg")
    if type(value) not in (int, float) or not 1 <= value <= 20:
        raise PresetError(f"{t.at('true_cfg')} = {value!r} must be a number in [1, 20] (1: no true CFG)")
    return float(value)


def _ramp(t: _Table) -> tuple[float, float]:
    ramp = t.get("layer_ramp")
    if not (isinstance(ramp, list) and len(ramp) == 2 and all(type(v) in (int, float) and 0 <= v <= 2 for v in ramp)):
        raise PresetError(f"{t.at('layer_ramp')} = {ramp!r} must be [first, last], two numbers in [0, 2]")
    return float(ramp[0]), float(ramp[1])


def _modes(t: _Table) -> tuple[str, ...]:
    if not t.has("modes"):
        return MODES
    modes = t.texts("modes")
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise PresetError(f"{t.at('modes')} = {list(modes)} must name some of {list(MODES)}")
    return modes


def load_mode_presets(
    families: dict[str, FamilySpec], preset_dir: Path = PRESET_DIR
) -> dict[str, dict[str, ModePreset]]:
    """Read and validate one TOML file per mode: `{mode: {family: ModePreset}}`, for the families that offer it.

    A family's preset is, key by key: its own section of the mode file, else the file's `[default]`, else the
    family's `defaults` in models.toml. Errors name the table each key came from.
    """
    presets: dict[str, dict[str, ModePreset]] = {}
    for mode in MODES:
        data, where = _read(preset_dir / f"{mode}.toml")
        default = data.pop("default", {})
        if isinstance(default, dict):  # the kind's texts (`mode_texts`), not a family's setting
            default = {k: v for k, v in default.items() if k not in KIND_TEXTS}
        for family in data:
            if family not in families:
                raise PresetError(f"{where}: [{family}] is not a family of presets/models.toml")
            if mode not in families[family].modes:
                raise PresetError(f"{where}: [{family}] is here, but models.toml says [{family}] has no {mode} mode")
        presets[mode] = {}
        for family, spec in families.items():
            if mode not in spec.modes:
                continue
            own = data.get(family, {})
            if not isinstance(own, dict) or not isinstance(default, dict):
                raise PresetError(f"{where}: [{family}] and [default] must be tables")
            origins = {k: ("presets/models.toml", f"[{family}.defaults]") for k in spec.defaults}
            origins |= {k: (where, "[default]") for k in default} | {k: (where, f"[{family}]") for k in own}
            t = _Table({**spec.defaults, **default, **own}, where, f"[{family}]", origins)
            presets[mode][family] = _mode_preset(t, mode, spec)
    return presets


def _mode_preset(t: _Table, mode: str, spec: FamilySpec) -> ModePreset:
    variants = t.texts("variants")
    for v in variants:
        for part in v.split("+"):  # "plus+plus-face": two adapters together, one image prompt each
            if part not in spec.adapters:
                raise PresetError(f"{t.at('variants')} names {part!r}, not one of {list(spec.adapters)}")
    compare = t.get("compare")
    if not isinstance(compare, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in compare):  # fmt: skip
        raise PresetError(f"{t.at('compare')} = {compare!r} must be a list of numbers")
    max_pixels = t.get("max_pixels")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int):
        raise PresetError(f"{t.at('max_pixels')} = {max_pixels!r} must be an integer in [1024, 4194304]")
    fields = dict(
        mode=mode, family=spec.name, variant=t.text("variant"), variants=variants,
        negative_prompt=t.text("negative_prompt"), strength=t.range("strength"), steps=t.range("steps", integer=True),
        guidance=t.range("guidance"), width=t.range("width", integer=True), height=t.range("height", integer=True),
        examples=t.texts("examples"), max_pixels=max_pixels, stop_at=t.range("stop_at"), crop=t.text("crop"),
        compare=tuple(float(v) for v in compare),
        prompt_template=t.text("prompt_template") if t.has("prompt_template") else "{prompt}",
        block_maps=t.get("block_maps") if t.has("block_maps") else None,
        structure=t.range("structure") if t.has("structure") else None, bases=tuple(spec.bases), fast=spec.fast,
        pipeline=spec.pipeline, intro=t.text("intro") if t.has("intro") else "",
    )  # fmt: skip
    t.done()
    try:
        return ModePreset(**fields)
    except ValueError as e:  # a check of the dataclass: it names the key
        key = str(e).split(" ", 1)[0]
        raise PresetError(f"{t.at(key)}{str(e).removeprefix(key)}") from None


@functools.cache
def _default_presets() -> dict[str, dict[str, ModePreset]]:
    return load_mode_presets(load_families())


def load_structure_presets(
    families: dict[str, FamilySpec], preset_dir: Path = PRESET_DIR
) -> dict[str, dict[str, StructurePreset]]:
    """Read presets/structure.toml: `{kind: {family: StructurePreset}}` for the families that can run that kind
    (a ControlNet for the map it makes, the models its `preprocessor` needs, an architecture with structure)."""
    data, where = _read(preset_dir / "structure.toml")
    root = _Table(data, where, "")
    out: dict[str, dict[str, StructurePreset]] = {}
    for kind in STRUCTURE_KINDS:
        t = root.table(kind)
        t.path = f"[{kind}]"
        own = _kind_facts(t)
        t.done()
        out[kind] = {}
        for name, spec in families.items():
            if own["map_type"] is not None:
                types: tuple[str, ...] = (own["map_type"],)
            else:  # a ready map of any type the family has a ControlNet for, or a start image (none)
                types = tuple(spec.controlnets) if own["controlnet"] else ()
            if any(c not in spec.controlnets for c in types) or (own["controlnet"] and not types):
                continue
            if own["preprocessor"] is not None and own["preprocessor"] not in spec.preprocessors:
                continue
            if not ARCHITECTURES[spec.pipeline].structure:  # no ControlNet or img2img pipeline wired for it yet
                continue
            try:
                out[kind][name] = StructurePreset(kind, name, control_types=types, **own)
            except ValueError as e:
                raise PresetError(f"{where}: [{kind}].{e}") from None
    root.done()
    return out


def _kind_facts(t: _Table) -> dict[str, Any]:
    """One structure kind's table: its texts, what its ControlNet reads, and its defaults."""
    thresholds = (100, 200)
    if t.has("canny_thresholds"):
        raw = t.get("canny_thresholds")
        if not (isinstance(raw, list) and len(raw) == 2 and all(type(x) is int for x in raw)):
            raise PresetError(f"{t.at('canny_thresholds')} = {raw!r} must be two whole numbers [low, high]")
        thresholds = (raw[0], raw[1])
    compare = t.get("compare")
    if not isinstance(compare, list) or not all(isinstance(v, (int, float)) for v in compare):
        raise PresetError(f"{t.at('compare')} = {compare!r} must be a list of numbers")
    reads = t.text("control_type", (*CONTROL_TYPES, "any", "none"))  # "any": the person says; "none": img2img
    settings = t.table("settings").data if t.has("settings") else {}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in settings.values()):
        raise PresetError(f"{t.at('settings')} = {settings!r} must hold numbers only")
    return {
        "strength": t.range("strength"), "stop_at": t.range("stop_at"), "crop": t.text("crop", CROP_MODES),
        "compare": tuple(float(v) for v in compare), "canny_thresholds": thresholds,
        "label": t.text("label"), "info": t.text("info"), "api": t.text("api"),
        "map_type": reads if reads not in ("any", "none") else None, "controlnet": reads != "none",
        "preprocessor": t.text("preprocessor") if t.has("preprocessor") else None, "settings": dict(settings),
    }  # fmt: skip


KIND_TEXTS = ("label", "info")  # what a mode file's [default] says of its kind as an added image prompt


@functools.cache
def mode_texts(key: str) -> dict[str, str]:
    """One text of every mode as an added image prompt, by mode ("label": how the page names it, "info": what its
    strength means), from each mode file's [default]."""
    return {mode: _Table(_kind_file(f"{mode}.toml").get("default", {}), f"presets/{mode}.toml", "[default]").text(key)
            for mode in MODES}  # fmt: skip


@functools.cache
def structure_texts(key: str) -> dict[str, str]:
    """One text of every structure kind, by kind ("label", "info" or "api"), as presets/structure.toml writes it
    (whatever the family: the texts describe the kind)."""
    data = _kind_file("structure.toml")
    return {kind: _Table(data[kind], "presets/structure.toml", f"[{kind}]").text(key) for kind in STRUCTURE_KINDS}


CONTROLNET_KINDS = tuple(k for k, reads in structure_texts("control_type").items() if reads != "none")


@functools.cache
def _structure_presets() -> dict[str, dict[str, StructurePreset]]:
    return load_structure_presets(load_families())


def preset_for(mode: str, family: str) -> ModePreset | StructurePreset:
    """The shipped preset of `mode` for `family` (read once): what an added image prompt of that kind uses."""
    presets = (_structure_presets() if mode in STRUCTURE_KINDS else _default_presets())[mode]
    if family not in presets:
        raise InvalidRequestError("mode", f"The {mode} mode is not available with the {family} family.")
    return presets[family]


def slot_kinds(family: str) -> tuple[str, ...]:
    """The kinds of slot this family can add: the image prompts of SLOT_MODES it offers, then its structure kinds."""
    own = tuple(m for m in SLOT_MODES if family in _default_presets()[m])
    return own + tuple(k for k in STRUCTURE_KINDS if family in _structure_presets()[k])
