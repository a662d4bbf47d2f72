"""Greedy tokens for base and each adapter (proves the adapter is applied, and equal across og versions)."""
import json, sys
import onnxruntime_genai as og
model_dir, specs = sys.argv[1], sys.argv[2:]
model = og.Model(model_dir); tok = og.Tokenizer(model); adapters = og.Adapters(model)
names = []
for spec in specs:
    n, p = spec.split("="); adapters.load(p, n); names.append(n)
ids = tok.encode("<|im_start|>user\nWhat should I pack for three days in Lisbon in April?<|im_end|>\n<|im_start|>assistant\n")
out = {}
for n in ["base"] + names:
    p = og.GeneratorParams(model); p.set_search_options(max_length=len(ids) + 24, do_sample=False)
    g = og.Generator(model, p)
    if n != "base":
        g.set_active_adapter(adapters, n)
    g.append_tokens(ids)
    while not g.is_done():
        g.generate_next_token()
    out[n] = list(map(int, g.get_sequence(0)))[len(ids):]
print(json.dumps({"og": og.__version__, "tokens": out}))
