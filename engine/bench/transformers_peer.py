"""The peer benchmark: transformers' CSM (PyTorch) on this machine, measured the way ours is.

Run it with the python of a separate virtualenv that has torch and transformers, for example
    python3 -m venv peer-venv && peer-venv/bin/pip install torch==2.13.0 transformers==5.24.0 numpy
    peer-venv/bin/python engine/bench/transformers_peer.py --prompt-rows 100 --frames 20
(`python -m engine.bench peer --python peer-venv/bin/python` runs it and ours, taking turns). It
imports nothing from this package, only torch and transformers.

It builds `CsmForConditionalGeneration` from the full-size default `CsmConfig` (CSM-1B and its
codec, a full-size Mimi: random weights, made directly in bfloat16, the dtype the reference runs in;
the codebooks, which transformers' init leaves at zero, drawn at random too), then runs
transformers' own `generate` (sampling, temperature 0.9, top-k 50, backbone and depth decoder) on a
prompt of `--prompt-rows` random text rows for `--frames` frames, and decodes the frames to audio
with the model's codec (`model.codec_model.decode`, what `generate(..., output_audio=True)` calls),
after one short warm-up generate and decode. `--size tiny` builds a tiny CsmConfig and Mimi instead
(the same structure, small widths: a check that this script runs, seconds on one thread). Timed:
  prefill         the backbone's first forward over the whole prompt (a forward hook on the backbone)
  first frame     from the call of generate to the first frame handed to its streamer
  frames/s        frames after the first, over the time between the first and the last frame
  frames/s with decoding
                  all frames over (the time from the end of the prefill to the last frame + decoding
                  all frames at once with the codec)
  time to first audio
                  transformers does not stream: generate returns all frames, then they are decoded.
                  Counted here as if it streamed in chunks of `--chunk-frames` frames (6, as ours
                  does): from the call of generate to the chunk's last frame at the streamer, plus
                  the codec decoding those frames alone. That is the earliest a streaming user of
                  their generate could hear audio, and it is how ours is counted (prefill + the
                  first chunk's frames + decoding that chunk).
  all audio       from the call of generate to the end of decoding all frames (what a caller of
                  generate(..., output_audio=True) waits)
  peak memory     the process's peak resident set (ru_maxrss), and its resident set after building
Prints one JSON object.

`--products ROWS` instead times only the backbone's matrix products the way PyTorch runs them in
prefill: a ROWS-row bfloat16 block through 16 distinct layers' 7 linear maps (q, k, v, o, gate, up,
down; random bfloat16 weights, 1.95 GB), median of `--rounds` (the peer of `python -m engine.bench
gemm`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time


class FrameClock:
    """A generate() streamer that only notes when each frame arrives."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:  # generate() hands the streamer the prompt first
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass


class ForwardClock:
    """Forward pre-hook/hook pair on the backbone: start and end time of each forward call."""

    def __init__(self, module, rows: int):
        self.rows, self.calls = rows, []
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._end)

    def _start(self, module, args):
        self.calls.append([time.perf_counter(), None])

    def _end(self, module, args, output):
        self.calls[-1][1] = time.perf_counter()


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


BACKBONE = dict(layers=16, dim=2048, heads=32, kv_heads=8, head_dim=64, hidden=8192)  # CSM-1B's


def products(rows: int, rounds: int, n_layers: int = BACKBONE["layers"]) -> dict:
    """Wall and CPU seconds of one block through the backbone's linear maps, torch bfloat16."""
    import torch  # lazy (also below): torch and transformers are optional, for this peer only
    import torch.nn.functional as F

    b = BACKBONE
    d, hd = b["dim"], b["head_dim"]
    shapes = [(b["heads"] * hd, d), (b["kv_heads"] * hd, d), (b["kv_heads"] * hd, d), (d, b["heads"] * hd),
              (b["hidden"], d), (b["hidden"], d), (d, b["hidden"])]
    layers = [[torch.empty(o, i, dtype=torch.bfloat16).uniform_(-0.02, 0.02) for o, i in shapes]
              for _ in range(n_layers)]
    xs = {i: torch.randn(rows, i, dtype=torch.bfloat16) for i in {i for _, i in shapes}}

    def block():
        for layer in layers:
            for w in layer:
                F.linear(xs[w.shape[1]], w)

    walls, cpus = [], []
    with torch.inference_mode():
        block()  # warm-up
        for _ in range(rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            block()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    walls.sort()
    cpus.sort()
    flops = 2.0 * rows * sum(o * i for o, i in shapes) * n_layers
    wall = walls[len(walls) // 2]
    return {"peer": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows,
            "ms_per_block": wall * 1e3, "all_ms": [w * 1e3 for w in walls],
            "cpu_ms_per_block": cpus[len(cpus) // 2] * 1e3, "gflops": flops / wall / 1e9,
            "rows_per_second_products": rows / wall}


def tiny_config(CsmConfig):
    """A small CsmConfig (and Mimi codec config) with CSM-1B's structure: 32 codebooks of 2048
    entries, Mimi's 24 kHz frame layout; only the widths and depths are small."""
    return CsmConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        depth_decoder_config=dict(backbone_hidden_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1),
        codec_config=dict(model_type="mimi", hidden_size=32, num_filters=4, codebook_dim=16,
                          vector_quantization_hidden_dimension=16, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=4, head_dim=8, intermediate_size=64, upsample_groups=32))


def build(size: str, seed: int):
    """CSM (with its Mimi codec) with random bfloat16 weights. -> (model, seconds)"""
    import torch
    from transformers import CsmConfig, CsmForConditionalGeneration

    torch.manual_seed(seed)
    start = time.perf_counter()
    config = CsmConfig() if size == "full" else tiny_config(CsmConfig)
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = CsmForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    with torch.no_grad():  # the codebooks: transformers' init leaves them at zero
        for module in model.codec_model.modules():
            if hasattr(module, "embed_sum"):
                module.embed_sum.normal_()
                module._embed = None
    return model, time.perf_counter() - start


def decode(model, codes):
    """Codes (1, frames, K) from generate -> audio, through the model's codec. -> (audio, seconds)"""
    start = time.perf_counter()
    # codes 2048-2050 (padding, end) have no codebook entry: the random model may sample them
    audio = model.codec_model.decode(codes.clamp(0, 2047).transpose(1, 2)).audio_values
    return audio, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt-rows", type=int, default=100)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--chunk-frames", type=int, default=6, help="frames of the first audio chunk")
    p.add_argument("--size", choices=("full", "tiny"), default="full", help="CSM-1B, or a tiny model (a check)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--products", type=int, default=None, metavar="ROWS",
                   help="time only the backbone's products for a ROWS-row block")
    p.add_argument("--rounds", type=int, default=3, help="rounds of --products")
    p.add_argument("--layers", type=int, default=BACKBONE["layers"], help="backbone layers for --products")
    a = p.parse_args(argv)
    if a.products:
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        print(json.dumps(products(a.products, a.rounds, a.layers)), flush=True)
        return 0

    import torch
    import transformers

    if a.threads:
        torch.set_num_threads(a.threads)
    model, load_s = build(a.size, a.seed)
    rss_after_load = rss_gb()

    config = model.config
    sampling = dict(do_sample=True, temperature=0.9, top_k=50, depth_decoder_do_sample=True,
                    depth_decoder_temperature=0.9, depth_decoder_top_k=50)
    clock = ForwardClock(model.backbone_model, a.prompt_rows)
    gen = torch.Generator().manual_seed(a.seed)
    prompt = torch.randint(0, 1000, (1, a.prompt_rows), generator=gen) + 1000
    warm = torch.randint(0, 1000, (1, 8), generator=gen) + 1000
    with torch.inference_mode():
        # warm-up: first-call costs of generate and of the codec
        decode(model, model.generate(input_ids=warm, max_new_tokens=3, **sampling))
        clock.calls.clear()
        frames = FrameClock()
        t0 = time.perf_counter()
        out = model.generate(input_ids=prompt, max_new_tokens=a.frames, streamer=frames, **sampling)
        total_s = time.perf_counter() - t0
        audio, decode_s = decode(model, out)
        n = len(frames.times)
        chunk = min(a.chunk_frames, n)
        _, chunk_decode_s = decode(model, out[:, :chunk])
    prefill_start, prefill_end = clock.calls[0]
    prefill_s = prefill_end - prefill_start
    fps = (n - 1) / (frames.times[-1] - frames.times[0]) if n > 1 else None
    result = {
        "peer": "transformers",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "dtype": "bfloat16", "threads": torch.get_num_threads(), "size": a.size,
        "prompt_rows": a.prompt_rows, "frames_requested": a.frames, "frames": n,
        "prefill_seconds": prefill_s,
        "prefill_rows_per_second": a.prompt_rows / prefill_s,
        "first_frame_seconds": frames.times[0] - t0 if n else None,  # prefill + one whole frame
        "frames_per_second": fps,
        "frames_per_second_with_decode": n / (frames.times[-1] - prefill_end + decode_s) if n else None,
        "first_chunk_frames": chunk,
        "time_to_first_audio": frames.times[chunk - 1] - t0 + chunk_decode_s if n else None,
        "all_audio_seconds": total_s + decode_s,
        "mimi_decode_seconds": decode_s,
        "mimi_first_chunk_seconds": chunk_decode_s,
        "audio_samples": int(audio.shape[-1]),
        "generate_seconds": total_s,
        "load_seconds": load_s,
        "rss_after_load_gb": rss_after_load,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "codes_shape": list(out.shape),
        "backbone_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
