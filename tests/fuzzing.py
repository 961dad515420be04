"""A seeded fuzzer for autolm's loaders, shared by tests/test_fuzz.py and bench/fuzz.py.

`make_seeds` writes one valid folder per file kind (a tiny llama checkpoint, tokenizers, a GGUF, ...);
`make_case` copies a seed and damages one file with `random.Random(seed)`; `run_cases` loads every case
through the public API in a worker process under a time and a memory limit, and counts each outcome:

- "ok": it loaded (the hostile value was harmless);
- "clean": an `autolm.errors.AutolmError` whose message names the file or the key;
- "unnamed": an AutolmError that names neither;
- "crash": any other exception; "hang": past the time limit; "oom": MemoryError or the worker killed.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import struct
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

KINDS = (
    "config",
    "safetensors",
    "bin",
    "index",
    "gguf",
    "tokenizer_json",
    "tokenizer_config",
    "vocab_txt",
    "bpe",
    "chat_template",
    "generation_config",
)
HOSTILE = [
    -1,
    0,
    1,
    10**9,
    10**30,
    -(10**18),
    float("nan"),
    float("inf"),
    -float("inf"),
    0.5,
    True,
    False,
    None,
    "",
    "x" * 100_000,
    "../../etc/passwd",
    "/etc/passwd",
    [],
    [1, "a"],
    [[[[[]]]]],
    {},
    {"a": {"b": None}},
    "NaN",
    "\udcff",
]
TEMPLATE_BOMBS = [
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "{{ range(10**9)|list }}",
    "{{ 'a' * 10**9 }}",
    "{% set n = 10**9 %}{{ 'ab' * n }}",
    "{{ messages|tojson(indent=10**9) }}",
    "{% set s = 'aaaaaaaaaa' %}" + "{% set s = s ~ s %}" * 40 + "{{ s }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('ab') }}",
    "{{ 1 / 0 }}",
    "{{ messages + 1 }}",
    "{{ messages[0].content.upper().nope() }}",
    "{{ 'a'|center(10**9) }}",
    "{{ '%1000000000d' % 1 }}",
    "{{ '{:>1000000000}'.format(1) }}",
    "".join(f"{{% macro m{i}() %}}x{{% endmacro %}}" for i in range(20000)),
    "{% for a in [1] %}" * 200 + "{% endfor %}" * 200,
    "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    "{{ ('a' * 100000)|replace('', 'b' * 1000) }}",
    "{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "{{ raise_exception('bad role') }}",
    "{{ foo.bar.baz }}",
    "{{ " + "(" * 1000 + "1" + ")" * 1000 + " }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{% for m in messages %}{{ m['content'] | int / 0 }}{% endfor %}",
    "{{ messages|map(attribute='content')|join('x' * 100000) }}",
    "{{ 10 ** 10 ** 10 }}",
    "{% if %}",
]
TEMPLATE_SNIPPETS = ["{{", "}}", "{%", "%}", "{% for x in messages %}", "{% endfor %}", "|tojson", "()", "**"]
TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MESSAGES = [{"role": "user", "content": "hello there"}]

# kind -> (seed folder, the file the mutation damages)
TARGETS = {
    "config": ("safetensors", "config.json"),
    "safetensors": ("safetensors", "model.safetensors"),
    "bin": ("bin", "pytorch_model.bin"),
    "index": ("sharded", "model.safetensors.index.json"),
    "gguf": ("gguf", "model.gguf"),
    "tokenizer_json": ("tokenizer", "tokenizer.json"),
    "tokenizer_config": ("tokenizer", "tokenizer_config.json"),
    "vocab_txt": ("wordpiece", "vocab.txt"),
    "bpe": ("bpe", "vocab.json"),
    "chat_template": ("tokenizer", "chat_template.jinja"),
    "generation_config": ("safetensors", "generation_config.json"),
}


# --- seeds -------------------------------------------------------------------------------------


def make_seeds(root: Path) -> Path:
    """Write one valid folder per seed into `root` (transformers and tokenizers write them)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    sys.path.insert(0, str(Path(__file__).parent))
    from gguf import GGMLQuantizationType
    from test_gguf import tiny_model, write_like_llama_cpp

    root.mkdir(parents=True, exist_ok=True)
    from conftest import TINY

    config = transformers.LlamaConfig(**TINY)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(root / "safetensors")
    (root / "safetensors" / "generation_config.json").write_text(
        json.dumps(
            {"max_new_tokens": 8, "do_sample": True, "temperature": 0.7, "top_k": 5, "eos_token_id": [2]}
        )
    )
    (root / "bin").mkdir()
    shutil.copy(root / "safetensors" / "config.json", root / "bin" / "config.json")
    torch.save(model.state_dict(), root / "bin" / "pytorch_model.bin")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    (root / "gguf").mkdir()
    path = write_like_llama_cpp(
        root / "gguf" / "model.gguf", "llama", tiny_model("llama"), GGMLQuantizationType.F32
    )
    _add_gguf_tokenizer(path)

    words = "hello there general kenobi the quick brown fox jumps over a lazy dog".split()
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(
        words * 4, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"])
    )
    (root / "tokenizer").mkdir()
    bpe.save(str(root / "tokenizer" / "tokenizer.json"))
    tok_config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 64}
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(tok_config))
    (root / "tokenizer" / "chat_template.jinja").write_text(TEMPLATE)
    (root / "bpe").mkdir()
    bpe.model.save(str(root / "bpe"))
    (root / "bpe" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    (root / "wordpiece").mkdir()
    (root / "wordpiece" / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words]) + "\n"
    )
    (root / "wordpiece" / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer"})
    )
    return root


def _add_gguf_tokenizer(path: Path) -> None:
    """Rewrite the seed GGUF with a vocabulary and a nested array, as gguf.GGUFWriter writes them."""
    import numpy as np
    from gguf import GGUFReader

    reader = GGUFReader(path)
    tensors = {t.name: (np.array(t.data), t.tensor_type) for t in reader.tensors}
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tokens = ["<unk>", "<s>", "</s>"] + [f"▁t{i}" for i in range(93)]
    fields |= {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [float(-i) for i in range(96)],
        "tokenizer.ggml.token_type": [2, 3, 3] + [1] * 93,
        "tokenizer.chat_template": TEMPLATE,
        "fuzz.nested": [[1, 2], [3, 4, 5]],
    }
    path.unlink()
    write_gguf_fields(path, fields, tensors)


def write_gguf_fields(path: Path, fields: dict, tensors: dict) -> None:
    """A GGUF of these metadata values (typed by their Python type) and (array, ggml type) tensors."""
    from gguf import GGUFValueType, GGUFWriter

    arch = fields.get("general.architecture", "llama")
    writer = GGUFWriter(path, arch if isinstance(arch, str) else "llama")
    for key, value in fields.items():
        if key == "general.architecture":
            if not isinstance(value, str):
                writer.add_key_value(key, value, _vtype(value))
            continue
        if value is None or (isinstance(value, (list, str)) and len(value) == 0 and isinstance(value, list)):
            continue
        vtype = _vtype(value)
        if vtype is None:
            continue
        if vtype == GGUFValueType.ARRAY and not _uniform(value):
            continue
        writer.add_key_value(key, value, vtype)
    for name, (array, qtype) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _vtype(value):
    from gguf import GGUFValueType

    if isinstance(value, bool):
        return GGUFValueType.BOOL
    if isinstance(value, int):
        return GGUFValueType.INT64 if abs(value) < 2**63 else None
    if isinstance(value, float):
        return GGUFValueType.FLOAT64
    if isinstance(value, str):
        return GGUFValueType.STRING
    if isinstance(value, list) and value:
        return GGUFValueType.ARRAY
    return None


def _uniform(value: list) -> bool:
    if not value or _vtype(value[0]) is None:
        return False
    first = type(value[0])
    return all(type(v) is first and (not isinstance(v, list) or _uniform(v)) for v in value)


# --- mutations ---------------------------------------------------------------------------------


def _paths(value, prefix=()):
    """Every (path, value) inside a JSON value."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:50]):
            yield from _paths(v, (*prefix, i))


def _set(root, path, value, delete=False):
    if not path:
        return value
    node = root
    for step in path[:-1]:
        node = node[step]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return root


def _hostile(rng: random.Random):
    choice = rng.random()
    if choice < 0.1:
        value = 1
        for _ in range(rng.choice([10, 200, 5000])):
            value = [value]
        return value
    return rng.choice(HOSTILE)


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    try:
        value = json.loads(data)
    except ValueError:
        return mutate_bytes(data, rng)
    paths = list(_paths(value))
    path, _ = rng.choice(paths)
    how = rng.random()
    if how < 0.15 and path:
        value = _set(value, path, None, delete=True)
    elif how < 0.2:
        return data[: rng.randrange(len(data))] + b"\xff\xfe" + data[len(data) // 2 :]
    else:
        value = _set(value, path, _hostile(rng))
    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return mutate_bytes(data, rng)


def mutate_bytes(data: bytes, rng: random.Random, region: int | None = None) -> bytes:
    data = bytearray(data)
    span = min(len(data), region or len(data)) or 1
    how = rng.random()
    if how < 0.4:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(span)] = rng.randrange(256)
    elif how < 0.6:
        del data[rng.randrange(len(data) + 1) :]
    elif how < 0.8:
        at = rng.randrange(span)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        at = rng.randrange(max(span - 8, 1))
        data[at : at + 8] = struct.pack("<Q", rng.choice([0, 1, 2**31, 2**32 - 1, 2**62, 2**64 - 1]))
    return bytes(data)


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    how = rng.random()
    if how < 0.25:
        return mutate_bytes(data, rng, region=8 + n)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    if how < 0.35:
        header = {"__metadata__": {"format": "pt"}}  # no tensors
    elif how < 0.5:
        other = rng.choice(names)  # overlap: two tensors on the same bytes
        header[name]["data_offsets"] = list(header[other]["data_offsets"])
        header[name]["shape"] = list(header[other]["shape"])
        header[name]["dtype"] = header[other]["dtype"]
    else:
        field = rng.choice(["dtype", "shape", "data_offsets"])
        value = _hostile(rng)
        if field != "dtype" and rng.random() < 0.5:
            value = [rng.choice([-1, 0, 10**9, 2**63, 1.5]) for _ in range(rng.randint(0, 3))]
        header[name][field] = value
    try:
        text = json.dumps(header).encode()
    except (ValueError, RecursionError):
        return mutate_bytes(data, rng)
    return struct.pack("<Q", len(text)) + text + body


def mutate_gguf(path: Path, rng: random.Random) -> None:
    how = rng.random()
    if how < 0.5:
        data = path.read_bytes()
        path.write_bytes(mutate_bytes(data, rng, region=min(len(data), 6000)))
        return
    import numpy as np
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (np.array(t.data), t.tensor_type) for t in reader.tensors}
    if how < 0.6:
        tensors = {}
    else:
        key = rng.choice(sorted(fields))
        if rng.random() < 0.2:
            del fields[key]
        else:
            fields[key] = rng.choice([*HOSTILE[:16], [[1, 2], [3]], [["a"], ["b", "c"]], "text", [1.5, 2.5]])
            if isinstance(fields[key], str) and fields[key] == "\udcff":
                fields[key] = "x"
    path.unlink()
    write_gguf_fields(path, fields, tensors)


def mutate_template(text: str, rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(TEMPLATE_BOMBS)
    at = rng.randrange(len(text) + 1)
    return text[:at] + rng.choice(TEMPLATE_SNIPPETS) + text[at:]


def make_case(seeds: Path, kind: str, seed: int, out: Path) -> Path:
    """Copy the seed folder for `kind` into `out` and damage its target file with `seed`."""
    rng = random.Random(f"{kind}-{seed}")
    folder, target = TARGETS[kind]
    shutil.copytree(seeds / folder, out)
    path = out / target
    if kind == "index":
        index = json.loads(path.read_text())
        shard = rng.choice(sorted(index["weight_map"]))
        hostile = rng.choice(["../" + folder + "/model-00001-of-00002.safetensors", "/etc/passwd", None])
        if hostile is not None and rng.random() < 0.6:
            index["weight_map"][shard] = hostile
            path.write_text(json.dumps(index))
        else:
            path.write_bytes(mutate_json(path.read_bytes(), rng))
    elif kind == "safetensors":
        path.write_bytes(mutate_safetensors(path.read_bytes(), rng))
    elif kind == "gguf":
        mutate_gguf(path, rng)
    elif kind == "bin":
        import torch

        if rng.random() < 0.5:
            state = torch.load(path, weights_only=True)
            name = rng.choice(sorted(state))
            state[name] = rng.choice([1, "x", [1, 2], {"a": torch.zeros(1)}, None])
            if rng.random() < 0.3:
                state = {}
            torch.save(state, path)
        else:
            path.write_bytes(mutate_bytes(path.read_bytes(), rng))
    elif kind == "chat_template":
        path.write_text(mutate_template(path.read_text(), rng))
    elif kind in ("vocab_txt",) or (kind == "bpe" and rng.random() < 0.3):
        if kind == "bpe":
            path = out / "merges.txt"
        path.write_bytes(mutate_bytes(path.read_bytes(), rng))
    else:
        path.write_bytes(mutate_json(path.read_bytes(), rng))
    return out


# --- running -----------------------------------------------------------------------------------


def load_case(kind: str, folder: Path) -> None:
    """Load `folder` the way a user would for this kind of file (and use what loads)."""
    import torch

    import autolm

    if kind in ("config", "safetensors", "bin", "index"):
        if kind == "config":
            autolm.AutoConfig.from_pretrained(folder)
        model = autolm.AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
    elif kind == "gguf":
        autolm.AutoConfig.from_pretrained(folder, gguf_file="model.gguf")
        tok = autolm.AutoTokenizer.from_pretrained(folder, gguf_file="model.gguf")
        tok("hello there")
        model = autolm.AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf")
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
    elif kind == "generation_config":
        autolm.GenerationConfig.from_pretrained(folder)
    else:
        tok = autolm.AutoTokenizer.from_pretrained(folder)
        ids = tok("hello there general")["input_ids"]
        tok.decode(ids)
        if kind in ("chat_template", "tokenizer_config", "tokenizer_json"):
            try:
                tok.apply_chat_template(MESSAGES, tokenize=False)
            except autolm.errors.ChatTemplateError as e:
                if "has no chat template" not in str(e):
                    raise


def classify(error: BaseException | None, folder: Path) -> str:
    from autolm.errors import AutolmError

    if error is None:
        return "ok"
    if isinstance(error, MemoryError):
        return "oom"
    if not isinstance(error, AutolmError):
        return "crash"
    text = str(error)
    names = {p.name for p in folder.rglob("*")} | {str(folder)}
    if any(name in text for name in names) or (error.key and error.key in text):
        return "clean"
    return "unnamed"


def _worker(connection, memory_bytes: int) -> None:
    import resource

    import autolm  # noqa: F401 (imported once, before the limit)
    from autolm.tokenization import chat_template

    chat_template.MAX_SECONDS = 0.5  # the same checks, a shorter budget: the fuzz runs many bombs
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + memory_bytes, hard))
    import logging

    logging.getLogger("autolm").setLevel(logging.CRITICAL)
    while True:
        job = connection.recv()
        if job is None:
            return
        kind, folder = job
        folder = Path(folder)
        try:
            load_case(kind, folder)
            error = None
        except BaseException as e:  # noqa: BLE001 (every outcome is counted)
            error = e
        outcome = classify(error, folder)
        detail = "" if outcome in ("ok", "clean") else "".join(traceback.format_exception(error))[-1500:]
        connection.send((outcome, detail))


class Runner:
    """A worker process that loads cases one at a time; replaced when a case hangs or kills it."""

    def __init__(self, timeout: float = 10.0, memory_bytes: int = 3 * 2**30):
        self.timeout, self.memory_bytes = timeout, memory_bytes
        self.context = multiprocessing.get_context("spawn")
        self.process = None

    def _start(self) -> None:
        self.connection, child = self.context.Pipe()
        self.process = self.context.Process(target=_worker, args=(child, self.memory_bytes), daemon=True)
        self.process.start()

    def run(self, kind: str, folder: Path) -> tuple[str, str]:
        if self.process is None or not self.process.is_alive():
            self._start()
        self.connection.send((kind, str(folder)))
        # the first case also waits for the worker's imports
        if self.connection.poll(self.timeout + (20 if not getattr(self, "_warm", False) else 0)):
            try:
                self._warm = True
                return self.connection.recv()
            except (EOFError, OSError):
                pass
        dead = not self.process.is_alive()
        code = self.process.exitcode
        self.close()
        self._warm = False
        if dead:
            return ("oom" if code in (-9, 137) else "crash"), f"worker died with exit code {code}"
        return "hang", f"no answer in {self.timeout} s"

    def close(self) -> None:
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join()
            self.process = None


def run_cases(
    seeds: Path, work: Path, cases: int, start: int = 0, timeout: float = 10.0, log=None
) -> tuple[Counter, list[tuple[str, int, str, str]]]:
    """Run `cases` cases (kinds in turn, seeds start, start+1, ...). Returns the counts by (kind, outcome)
    and the failures as (kind, seed, outcome, detail)."""
    counts: Counter = Counter()
    failures = []
    runner = Runner(timeout=timeout)
    try:
        for i in range(start, start + cases):
            kind = KINDS[i % len(KINDS)]
            folder = work / f"case-{i}"
            make_case(seeds, kind, i, folder)
            began = time.monotonic()
            outcome, detail = runner.run(kind, folder)
            counts[kind, outcome] += 1
            if outcome not in ("ok", "clean"):
                failures.append((kind, i, outcome, detail))
                if log:
                    log(f"{kind} case {i}: {outcome} ({time.monotonic() - began:.1f} s)\n{detail}")
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        runner.close()
    return counts, failures


def summary(counts: Counter) -> str:
    outcomes = ("ok", "clean", "unnamed", "crash", "hang", "oom")
    lines = [f"{'kind':<18}" + "".join(f"{o:>9}" for o in outcomes)]
    for kind in KINDS:
        lines.append(f"{kind:<18}" + "".join(f"{counts[kind, o]:>9}" for o in outcomes))
    lines.append(f"{'total':<18}" + "".join(f"{sum(counts[k, o] for k in KINDS):>9}" for o in outcomes))
    return "\n".join(lines)
