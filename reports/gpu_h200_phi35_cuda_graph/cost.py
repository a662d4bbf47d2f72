"""Decode tok/s of base, adapters and a reference build, interleaved rounds, through onnxruntime-genai's
own API (the seed client's calls: og.Model, og.Adapters.load, set_active_adapter, generate_next_token).
usage: cost.py MODEL_DIR REFERENCE_DIR NAME=ADAPTER ...   (whichever onnxruntime-genai is on PYTHONPATH)"""
import json, statistics, sys, time
import onnxruntime as ort
import onnxruntime_genai as og
import os
NEW, ROUNDS = int(os.environ.get("NEW_TOKENS", 128)), int(os.environ.get("ROUNDS", 5))

model_dir, reference_dir, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
model = og.Model(model_dir)
reference = og.Model(reference_dir)
tok = og.Tokenizer(model)
adapters = og.Adapters(model)
names = []
for spec in specs:
    name, path = spec.split("=")
    adapters.load(path, name)
    names.append(name)
ids = tok.encode("Plan a three-day trip to Lisbon in April: what to see, where to eat, and what to pack. " * 4)[:64]


def answer(m, adapter, n=NEW):
    p = og.GeneratorParams(m)
    p.set_search_options(max_length=len(ids) + n, do_sample=False)
    g = og.Generator(m, p)
    if adapter:
        g.set_active_adapter(adapters, adapter)
    g.append_tokens(ids)
    t0, out = time.perf_counter(), []
    while not g.is_done() and len(out) < n:
        g.generate_next_token()
        out.append(int(g.get_next_tokens()[0]))
    return len(out) / (time.perf_counter() - t0), out


engines = {"base": (model, None), **{n: (model, n) for n in names}, "reference": (reference, None)}
runs = {e: [] for e in engines}
tokens = {}
for rnd in range(1 + ROUNDS):  # one warm-up round, then ROUNDS
    for e, (m, a) in engines.items():
        speed, out = answer(m, a)
        tokens[e] = out[:32]
        if rnd:
            runs[e].append(speed)
med = {e: round(statistics.median(v), 1) for e, v in runs.items()}
print(json.dumps({"og": og.__version__, "ort": ort.__version__, "model": model_dir, "tok_s": med,
                  "adapter_cost_pct": {n: round(100 * (1 - med[n] / med["base"]), 1) for n in names},
                  "base_vs_reference": round(med["base"] / med["reference"], 3), "tokens": tokens}))
