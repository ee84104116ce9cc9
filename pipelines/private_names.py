"""Every private or undocumented name of diffusers and Gradio this project relies on, in one list.

Pinned versions (requirements.txt): diffusers 0.42.1, gradio 6.31.0, mcp 1.30.0 (and safehttpx, which Gradio
pins; torch 2.13.0 for the one public function replaced). When a pin moves, run
`python -m pytest tests/test_private_names.py`: it checks each name still exists; then read the places that use
it. A string list only: nothing here imports the libraries (pipelines/ never imports gradio).
"""

from __future__ import annotations

# (module, attribute path inside it, where we use it and why)
PRIVATE_NAMES: tuple[tuple[str, str, str], ...] = (
    ("diffusers.utils", "_get_model_file", "pipelines/sources.py: resolve one checkpoint file, Hub or local"),
    (
        "diffusers.loaders.unet_loader_utils",
        "_maybe_expand_lora_scales",
        "pipelines/attention.py: an InstantStyle block map as a weight per attention processor",
    ),
    (
        "diffusers",
        "UNet2DConditionModel._load_ip_adapter_loras",
        "pipelines/adapters.py: the FaceID LoRA, converted once and kept in memory",
    ),
    (
        "diffusers",
        "UNet2DConditionModel._load_ip_adapter_weights",
        "bench/run.py, bench/stack.py: stock diffusers' adapter load timed as its users run it",
    ),
    ("diffusers", "DiffusionPipeline._execution_device", "pipelines/arch/: encode_prompt's device argument"),
    ("diffusers", "FluxPipeline._pack_latents", "pipelines/arch/flux.py: seeded noise in the pipeline's packed form"),
    (
        "diffusers",
        "Flux2KleinPipeline._pack_latents",
        "pipelines/arch/flux2.py: seeded noise and reference latents in the pipeline's packed form",
    ),
    ("diffusers", "Flux2KleinPipeline._prepare_latent_ids", "pipelines/arch/flux2.py: the image tokens' positions"),
    (
        "diffusers",
        "Flux2KleinPipeline._prepare_image_ids",
        "pipelines/arch/flux2.py: the references' positions (time coordinate 10, 20, ... by image)",
    ),
    ("diffusers", "Flux2KleinPipeline._encode_vae_image", "pipelines/arch/flux2.py: a reference's latents"),
    ("diffusers", "Flux2KleinPipeline._unpack_latents_with_ids", "pipelines/arch/flux2.py: decoding, as stock"),
    ("diffusers", "Flux2KleinPipeline._unpatchify_latents", "pipelines/arch/flux2.py: ... the same"),
    (
        "diffusers.pipelines.flux2.pipeline_flux2_klein",
        "compute_empirical_mu",
        "pipelines/arch/flux2.py: the pass's timesteps, as stock computes them",
    ),
    ("diffusers.pipelines.flux2.pipeline_flux2_klein", "retrieve_timesteps", "pipelines/arch/flux2.py: ... the same"),
    (
        "diffusers.pipelines.flux2.image_processor",
        "Flux2ImageProcessor._resize_to_target_area",
        "pipelines/arch/flux2.py: a reference over 1 megapixel, as stock resizes it",
    ),
    (
        "diffusers.models.transformers.transformer_flux",
        "_get_qkv_projections",
        "pipelines/arch/flux_attention.py: ScaledFluxIPAdapterAttnProcessor, copied from FluxIPAdapterAttnProcessor",
    ),
    (
        "diffusers.models.attention_dispatch",
        "dispatch_attention_fn",
        "pipelines/arch/flux_attention.py: ... its attention call",
    ),
    ("diffusers.loaders.ip_adapter", "safe_open", "tests/test_dryrun.py: the XLabs file reader fed meta tensors"),
    (
        "diffusers.models.controlnets.multicontrolnet",
        "MultiControlNetModel.forward",
        "pipelines/controlnets.py: subclassed; its forward adapted to scale each net's residuals per sample",
    ),
    (
        "diffusers.models.controlnets.multicontrolnet_union",
        "MultiControlNetUnionModel.forward",
        "pipelines/controlnets.py: the same for ControlNet-Union (SDXL)",
    ),
    ("gradio.context", "Context.root_block", "ui/tab.py: a tab builds its own Blocks only when used alone"),
    ("gradio.blocks", "Blocks._queue", "ui/serving.py: the gate wraps the queue's push"),
    (
        "gradio.queueing",
        "Queue.event_queue_per_concurrency_id",
        "ui/serving.py: the jobs each visitor holds, waiting",
    ),
    ("gradio.queueing", "Queue.active_jobs", "ui/serving.py: ... and running"),
    ("gradio.queueing", "Event._id", "ui/stop.py: the event a cancel names, among those running"),
    ("gradio.queueing", "Queue.push", "ui/serving.py: replaced by the gate's limited push"),
    ("gradio.mcp", "GradioMCPServer.StreamableHTTPSessionManager", "ui/mcp.py: MCP sessions kept (stateful)"),
    ("gradio.mcp", "GradioMCPServer.create_mcp_server", "ui/mcp.py: the tool-call handler wrapped"),
    ("gradio.mcp", "GradioMCPServer.get_input_schema", "ui/mcp.py: image inputs declared as strings"),
    ("gradio.mcp", "GradioMCPServer._prepare_tool_call_args", "ui/mcp.py: paths turned into file values"),
    ("gradio.mcp", "GradioMCPServer.postprocess_output_data", "ui/mcp.py: results as URLs and JSON"),
    ("gradio.mcp", "Client", "ui/mcp.py: the internal client carries the process secret"),
    ("mcp.server.lowlevel.server", "Server.request_handlers", "ui/mcp.py: the tool-call handler wrapped"),
    ("mcp.server.lowlevel.server", "Server._make_error_result", "ui/mcp.py: a refused call's error result"),
    (
        "mcp.server.streamable_http_manager",
        "StreamableHTTPSessionManager._admit_session",
        "ui/mcp.py: subclassed; each new session noted with the address that opened it",
    ),
    (
        "mcp.server.streamable_http_manager",
        "StreamableHTTPSessionManager._discard_session",
        "ui/mcp.py: subclassed; a session's end noted, and called to close an unused session",
    ),
    (
        "mcp.server.streamable_http_manager",
        "StreamableHTTPSessionManager._server_instances",
        "ui/mcp.py: an unused session's transport, to close it",
    ),
    ("safehttpx", "async_validate_url", "ui/egress.py: replaced: Gradio's URL downloads use resolve_public"),
    ("safehttpx", "async_resolve_hostname_google", "ui/egress.py: replaced: no host name sent to a public DNS"),
    ("safehttpx", "is_public_ip", "ui/egress.py: replaced by public_ip"),
    ("torch.nn.functional", "linear", "pipelines/numerics.py: replaced by a row-exact linear (CPU, few rows)"),
)
