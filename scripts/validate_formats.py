#!/usr/bin/env python3
"""Validate csv-agent's export formats by a real (tiny) training run.

For every format, export it with the csv-agent binary, load it with Hugging
Face `datasets`, check the columns its trainer needs, and run a few dozen
steps of the matching trainer on CPU with a randomly initialised tiny model
and a tokenizer trained on the spot from the exported text. Nothing is
downloaded: HF_HUB_OFFLINE=1.

    python3 -m venv target/venv-validate
    target/venv-validate/bin/pip install -r scripts/requirements-validate.txt
    target/venv-validate/bin/python scripts/validate_formats.py

Without --episodes the script first makes an episodes file with verified and
unverified episodes: `csv-agent run --only penguins,seattle-weather
--max-questions 20 --templates scripts/validate-templates`, whose two
deliberately flawed templates give disagreeing traces (negatives for dpo /
kto / prm / orm). See docs/formats.md, "Validation by training".

The `rl` step runs its rollouts in the jail: the script starts `csv-agent
serve` and the GRPO reward is clients/python/csv_agent_client.py's
`make_grpo_reward` (each completion's code in a fresh session, scored by the
server with the documented reward). Before training, every verified rl row
is rolled out once with its episode's gold program as the completion and must
score >= 1.0 (a wrong answer must not): `--rl-rollouts-only` runs just that
check, without the training libraries.

Exit 0 when every trainer ran; 1 when one failed or could not run (named,
with the reason); 2 when the set-up failed (no binary, export error).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# No downloads, no telemetry, no progress bars: before any HF import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("ACCELERATE_USE_CPU", "true")

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "scripts" / "validate-templates"
ALL_FORMATS = ["sft", "sft-tools", "sft-interleaved", "prm", "orm", "dpo", "kto", "rl"]
# Formats whose negatives come from disagreeing traces: exported with
# --include-unverified (the flawed template's unverified episodes).
WITH_UNVERIFIED = {"prm", "orm", "dpo", "kto", "rl"}
ROLES = {"system", "user", "assistant", "tool"}


def log(msg: str = "") -> None:
    print(msg, flush=True)


class SetupError(Exception):
    pass


# --------------------------------------------------------------------------
# csv-agent: episodes and exports


def find_bin(arg: str | None) -> Path:
    cands = [Path(arg)] if arg else [REPO / "target/release/csv-agent", REPO / "target/debug/csv-agent"]
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c.resolve()
    raise SetupError(f"no csv-agent binary at {', '.join(map(str, cands))} (cargo build --release, or --bin PATH)")


def make_episodes(binary: Path, work: Path, max_questions: int) -> Path:
    out = work / "run"
    cmd = [str(binary), "run", "--only", "penguins,seattle-weather", "--max-questions", str(max_questions),
           "--out", str(out), "--templates", str(TEMPLATES)]
    log(f"$ {' '.join(cmd)}")
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    log(p.stdout.rstrip())
    episodes = out / "episodes.jsonl"
    if p.returncode not in (0, 1) or not episodes.is_file():
        raise SetupError(f"csv-agent run exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    if p.returncode == 1:
        log(f"(csv-agent run exited 1, partial: {p.stderr.strip()[-500:]})")
    log(f"episodes made in {time.monotonic() - t0:.1f}s: {episodes}")
    return episodes


def episode_stats(path: Path) -> dict:
    n = verified = 0
    by_template: dict[str, list[int]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            e = json.loads(line)
            n += 1
            v = bool(e.get("verified"))
            verified += v
            t = (e.get("question") or {}).get("template_name") or "(none)"
            by_template.setdefault(t, [0, 0])[0 if v else 1] += 1
    return {"episodes": n, "verified": verified, "unverified": n - verified, "by_template": by_template}


def export(binary: Path, fmt: str, episodes: Path, out: Path, unverified: bool, flavor: str | None = None) -> str:
    cmd = [str(binary), "export", "--format", fmt, "--episodes", str(episodes), "--out", str(out)]
    if unverified:
        cmd.append("--include-unverified")
    if flavor:
        cmd += ["--flavor", flavor]
    p = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    if p.returncode != 0:
        raise SetupError(f"export {fmt} {'--include-unverified ' if unverified else ''}exited {p.returncode}: "
                         f"{(p.stderr or p.stdout).strip()}")
    return (p.stdout + p.stderr).strip().replace("\n", " ")


def count_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


# --------------------------------------------------------------------------
# Column checks (on the `datasets` rows, i.e. after Arrow's schema unification)


def _check_messages(msgs, where: str, *, first_system=True, last_assistant=True, tools=False) -> None:
    assert isinstance(msgs, list) and msgs, f"{where}: messages is not a non-empty list"
    for i, m in enumerate(msgs):
        assert m.get("role") in ROLES, f"{where}: message {i} has role {m.get('role')!r}"
        assert isinstance(m.get("content"), str), f"{where}: message {i} content is {type(m.get('content'))}"
        if m["role"] == "tool":
            assert tools, f"{where}: tool message in a non-tool format"
    if first_system:
        assert msgs[0]["role"] == "system", f"{where}: first message is {msgs[0]['role']}, not system"
    if last_assistant:
        assert msgs[-1]["role"] == "assistant", f"{where}: last message is {msgs[-1]['role']}, not assistant"


def check_columns(fmt: str, ds, flavor: str | None = None) -> str:
    cols = set(ds.column_names)
    need = {
        "sft": {"messages"}, "sft-tools": {"messages", "tools"}, "sft-interleaved": {"messages"},
        "prm": {"prompt", "completions", "labels"}, "orm": {"prompt", "completion", "label"},
        "dpo": {"prompt", "chosen", "rejected"}, "kto": {"prompt", "completion", "label"},
        "rl": {"prompt", "answer", "answer_hash", "ground_truth_hashes", "hook_hashes", "dataset",
               "question_id", "difficulty"},
    }[fmt]
    if flavor == "openai":
        need = {"sft-tools": {"messages", "tools"},
                "dpo": {"input", "preferred_output", "non_preferred_output"}}[fmt]
    missing = need - cols
    assert not missing, f"missing columns {sorted(missing)} (has {sorted(cols)})"
    extra = cols - need
    for i, r in enumerate(ds):
        w = f"row {i}"
        if flavor == "openai" and fmt == "dpo":
            _check_messages(r["input"]["messages"], w, last_assistant=False)
            for k in ("preferred_output", "non_preferred_output"):
                assert len(r[k]) == 1 and r[k][0]["role"] == "assistant", f"{w}: {k} is not one assistant message"
        elif fmt in ("sft", "sft-interleaved"):
            _check_messages(r["messages"], w)
        elif fmt == "sft-tools":
            _check_messages(r["messages"], w, tools=True)
            assert r["tools"] and r["tools"][0]["function"]["name"] == "python", f"{w}: tools is not [python]"
            for m in r["messages"]:
                for c in m.get("tool_calls") or []:
                    args = c["function"]["arguments"]
                    if flavor == "openai":
                        assert isinstance(args, str) and "code" in json.loads(args), f"{w}: arguments not JSON text"
                        assert c.get("id"), f"{w}: tool call without id"
                    else:
                        assert isinstance(args, dict) and isinstance(args.get("code"), str), f"{w}: arguments {args!r}"
        elif fmt == "prm":
            assert isinstance(r["prompt"], str) and r["prompt"], f"{w}: prompt"
            assert len(r["completions"]) == len(r["labels"]) >= 1, f"{w}: {len(r['completions'])} steps, {len(r['labels'])} labels"
            assert all(isinstance(x, bool) for x in r["labels"]), f"{w}: labels not bool"
        elif fmt in ("orm",):
            assert isinstance(r["completion"], str) and isinstance(r["label"], bool), f"{w}: completion/label types"
        elif fmt == "kto":
            _check_messages(r["prompt"], w, last_assistant=False)
            _check_messages(r["completion"], w, first_system=False)
            assert r["completion"][0]["role"] == "assistant", f"{w}: completion starts with {r['completion'][0]['role']}"
            assert isinstance(r["label"], bool), f"{w}: label not bool"
        elif fmt == "dpo":
            _check_messages(r["prompt"], w, last_assistant=False)
            assert r["prompt"][-1]["role"] == "user", f"{w}: prompt does not end with the user"
            for k in ("chosen", "rejected"):
                _check_messages(r[k], f"{w} {k}", first_system=False)
                assert r[k][0]["role"] == "assistant", f"{w}: {k} starts with {r[k][0]['role']}"
            assert r["chosen"] != r["rejected"], f"{w}: chosen == rejected"
        elif fmt == "rl":
            _check_messages(r["prompt"], w, last_assistant=False)
            json.loads(r["answer"])
            assert r["answer_hash"] and isinstance(r["ground_truth_hashes"], list), f"{w}: hashes"
            assert (REPO / r["dataset"]).is_file() or Path(r["dataset"]).is_file(), f"{w}: dataset {r['dataset']} not found"
    note = f"columns ok: {', '.join(sorted(need))}"
    if extra:
        note += f" (+ {', '.join(sorted(extra))})"
    return note


def label_counts(fmt: str, ds) -> str:
    if fmt == "prm":
        labels = [x for r in ds for x in r["labels"]]
        return f"{sum(labels)} true / {len(labels) - sum(labels)} false steps"
    if fmt in ("orm", "kto"):
        labels = ds["label"]
        return f"{sum(labels)} true / {len(labels) - sum(labels)} false"
    return ""


# --------------------------------------------------------------------------
# Tokenizer and model, made on the spot


def corpus(datasets_by_fmt: dict) -> list[str]:
    texts: list[str] = []

    def add(x):
        if isinstance(x, str):
            texts.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                add(v)
        elif isinstance(x, list):
            for v in x:
                add(v)

    for ds in datasets_by_fmt.values():
        for r in ds:
            add(r)
    # the chat template's own text (tools preamble, tags)
    texts.append('<tool_call>\n{"name": "python", "arguments": {"code": ""}}\n</tool_call>\n<tool_response>\n</tool_response>'
                 "# Tools\n\nYou may call one or more functions to assist with the user query.")
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen2_5_chat_template

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    # Qwen2.5's chat template (shipped inside TRL; tools and tool calls; TRL
    # swaps in its {% generation %} variant for assistant_only_loss).
    fast.chat_template = qwen2_5_chat_template
    return fast


def tiny_config(tok, max_len: int, **kw):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max(max_len, 4096),
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                       tie_word_embeddings=True, **kw)


def causal_lm(tok, max_len: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(tok, max_len))


# --------------------------------------------------------------------------
# Trainers


def common_args(out: Path, steps: int, batch: int, lr: float) -> dict:
    return dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch,
                gradient_accumulation_steps=1, learning_rate=lr, lr_scheduler_type="constant",
                warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                bf16=False, fp16=False, seed=0, data_seed=0, disable_tqdm=True, gradient_checkpointing=False,
                dataloader_num_workers=0)


def run_sft(ds, tok, out, a):
    from trl import SFTConfig, SFTTrainer

    cfg = SFTConfig(**common_args(out, a.steps, a.batch, a.lr), max_length=a.max_length, packing=False,
                    assistant_only_loss=True)
    return SFTTrainer(model=causal_lm(tok, a.max_length), args=cfg, train_dataset=ds, processing_class=tok)


def run_dpo(ds, tok, out, a):
    from trl import DPOConfig, DPOTrainer

    cfg = DPOConfig(**common_args(out, a.steps, a.batch, a.pref_lr), max_length=a.max_length)
    return DPOTrainer(model=causal_lm(tok, a.max_length), ref_model=causal_lm(tok, a.max_length), args=cfg,
                      train_dataset=ds, processing_class=tok)


def run_kto(ds, tok, out, a):
    from trl import KTOConfig, KTOTrainer

    # Few negatives: weigh the undesirable side up so both sides count alike
    # (TRL's recommendation: desirable_weight * n_D / (undesirable_weight * n_U) in [1, 4/3]).
    n_d = sum(ds["label"])
    n_u = len(ds) - n_d
    cfg = KTOConfig(**common_args(out, a.steps, max(a.batch, 2), a.pref_lr), max_length=a.max_length,
                    undesirable_weight=max(1.0, n_d / max(n_u, 1)))
    return KTOTrainer(model=causal_lm(tok, a.max_length), ref_model=causal_lm(tok, a.max_length), args=cfg,
                      train_dataset=ds, processing_class=tok)


def run_prm(ds, tok, out, a):
    import torch
    from transformers import AutoModelForTokenClassification
    from trl.experimental.prm import PRMConfig, PRMTrainer

    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_config(tiny_config(tok, a.max_length, num_labels=2))
    # Steps contain newlines (docs/formats.md): a blank line separates them.
    cfg = PRMConfig(**common_args(out, a.steps, a.batch, a.lr), max_length=a.max_length, step_separator="\n\n")
    return PRMTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)


def run_orm(ds, tok, out, a):
    """ORM rows with a plain sequence classifier (transformers Trainer)."""
    import torch
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(tok, a.max_length, num_labels=2))

    def enc(r):
        # keep the END of the completion (what was submitted, or the error)
        p = tok(r["prompt"] + "\n\n", add_special_tokens=False)["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (p + c)[-a.max_length:] if len(p) + len(c) > a.max_length else p + c
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": int(r["label"])}

    data = ds.map(enc, remove_columns=ds.column_names)
    args = TrainingArguments(**common_args(out, a.steps, a.batch, a.lr))
    return Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok),
                   processing_class=tok)


RL_SEEN: dict = {"rollouts": 0, "with_code": 0}
# The jail reward (csv_agent_client.make_grpo_reward), set once the server runs.
JAIL_REWARD = None


def client_module():
    sys.path.insert(0, str(REPO / "clients" / "python"))
    import csv_agent_client

    return csv_agent_client


class JailServer:
    """`csv-agent serve` on a private socket for the rl rollouts."""

    def __init__(self, binary: Path, work: Path):
        self.socket = work / "serve" / "sock" / "serve.sock"
        self.socket.parent.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.socket.parent.parent, 0o700)
        cmd = [str(binary), "serve", "--socket", str(self.socket), "--datasets", str(REPO / "datasets")]
        log(f"$ {' '.join(cmd)}")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("unix:"):
            self.proc.wait(timeout=30)
            raise SetupError(f"csv-agent serve did not start (exit {self.proc.returncode})")
        self.endpoint = str(self.socket)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def gold_programs(episodes: Path) -> dict:
    """question id -> (verified, the gold trace's code blocks up to its last submitting turn)."""
    out = {}
    with open(episodes, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            e = json.loads(line)
            turns = (e.get("gold_trace") or {}).get("turns") or []
            last = max((i for i, t in enumerate(turns)
                        if (t.get("execution") or {}).get("submitted_answer") is not None), default=-1)
            out[e["question"]["id"]] = (bool(e.get("verified")), [t["code"] for t in turns[: last + 1]])
    return out


def check_rl_rollouts(endpoint: str, rl_path: Path, episodes: Path, limit: int) -> tuple[str, list[str]]:
    """Roll out verified rl rows in the jail with their gold program as the
    completion (must score >= 1.0) and with a wrong answer (must not)."""
    cac = client_module()
    reward = cac.make_grpo_reward(endpoint, datasets_root=str(REPO))
    gold = gold_programs(episodes)
    rows = [json.loads(l) for l in open(rl_path, encoding="utf-8") if l.strip()]
    rows = [r for r in rows if gold.get(r["question_id"], (False, []))[0] and gold[r["question_id"]][1]][:limit]
    if not rows:
        return "no verified rl row with a gold program", ["rl: nothing to roll out"]
    cols = {k: [r[k] for r in rows] for k in ("answer", "answer_hash", "ground_truth_hashes", "hook_hashes", "dataset")}
    good = ["\n".join(f"```python\n{code}\n```" for code in gold[r["question_id"]][1]) for r in rows]
    wrong = ["```python\nsubmit('certainly not the answer')\n```"] * len(rows)
    t0 = time.monotonic()
    g = reward(completions=good, **cols)
    w = reward(completions=wrong, **cols)
    problems = [f"rl row {r['question_id']}: the gold program scored {x} in the jail"
                for r, x in zip(rows, g) if x < 1.0]
    problems += [f"rl row {r['question_id']}: a wrong answer scored {x}" for r, x in zip(rows, w) if x >= 1.0]
    full = sum(1 for r, x in zip(rows, g) if r["hook_hashes"] and x >= 1.0 + 0.25 - 1e-9)
    msg = (f"{len(rows)} verified rows rolled out in the jail ({2 * len(rows)} sessions, "
           f"{time.monotonic() - t0:.1f}s): gold programs scored {min(g):.3f}..{max(g):.3f} "
           f"(mean {sum(g) / len(g):.3f}; {full} with every expected hook), wrong answers {max(w):.3f} at most")
    return msg, problems


def rl_reward(completions, answer, answer_hash, ground_truth_hashes, hook_hashes, dataset, **kwargs):
    """The real reward: each completion's code runs in a fresh session in the
    jail (csv-agent serve) and is scored by the server
    (csv_agent::formats::reward). A tiny random model writes no ```python
    block, so that term is 0 for it; a small length term gives GRPO non-zero
    advantages. Also checks that every rl column reaches the reward function."""
    RL_SEEN.update(answer_hash=answer_hash[0], hooks=len(hook_hashes[0]), dataset=dataset[0],
                   gt=len(ground_truth_hashes[0]))
    cac = client_module()
    jail = JAIL_REWARD(completions, answer, answer_hash, ground_truth_hashes, hook_hashes, dataset)
    RL_SEEN["rollouts"] += len(completions)
    RL_SEEN["with_code"] += sum(1 for c in completions if cac.extract_code(c))
    out = []
    for c, j in zip(completions, jail):
        text = c[-1]["content"] if isinstance(c, list) else c
        out.append(j + 0.01 * min(len(text), 100) / 100)
    return out


def run_rl(ds, tok, out, a):
    from trl import GRPOConfig, GRPOTrainer

    cfg = GRPOConfig(**common_args(out, a.rl_steps, 4, a.lr), num_generations=4, max_completion_length=24,
                     temperature=1.0, beta=0.0)
    return GRPOTrainer(model=causal_lm(tok, a.max_length), reward_funcs=rl_reward, args=cfg, train_dataset=ds,
                       processing_class=tok)


TRAINERS = {
    "sft": ("SFTTrainer", run_sft),
    "sft-tools": ("SFTTrainer (tools)", run_sft),
    "sft-interleaved": ("SFTTrainer", run_sft),
    "prm": ("PRMTrainer", run_prm),
    "orm": ("Trainer + SequenceClassification", run_orm),
    "dpo": ("DPOTrainer", run_dpo),
    "kto": ("KTOTrainer", run_kto),
    "rl": ("GRPOTrainer", run_rl),
}


def losses(history: list[dict], key: str, n: int = 1) -> tuple[float | None, float | None]:
    """First and last logged value of `key` (n > 1: the means of the first and the last n)."""
    vals = [h[key] for h in history if key in h and isinstance(h[key], (int, float))]
    if not vals:
        return None, None
    head, tail = vals[:n], vals[-n:]
    return sum(head) / len(head), sum(tail) / len(tail)


# --------------------------------------------------------------------------
# Synthetic negatives, only when an export has none (an --episodes file
# without disagreeing traces)


def synth_negatives(fmt: str, ds, kto_ds):
    """Mismatched pairs: the completion of another question. Marked in the report."""
    from datasets import Dataset

    rng = random.Random(0)
    if fmt == "dpo":
        pos = [r for r in kto_ds if r["label"]]
        rows = []
        for i, r in enumerate(pos):
            others = [o for o in pos if o["prompt"][-1]["content"] != r["prompt"][-1]["content"]]
            if others:
                rows.append({"prompt": r["prompt"], "chosen": r["completion"],
                             "rejected": rng.choice(others)["completion"]})
        return Dataset.from_list(rows)
    if fmt == "kto":
        rows = [dict(r) for r in ds]
        for r in list(rows):
            others = [o for o in rows if o["prompt"][-1]["content"] != r["prompt"][-1]["content"] and o["label"]]
            if others:
                rows.append({"prompt": r["prompt"], "completion": rng.choice(others)["completion"], "label": False})
        return Dataset.from_list(rows)
    return ds


# --------------------------------------------------------------------------


def fmt_loss(x):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def rollouts_only(a) -> int:
    """Export rl (with unverified episodes) and roll its verified rows out in the jail."""
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="validate-formats-"))
    work.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        binary = find_bin(a.bin)
        episodes = a.episodes.resolve() if a.episodes else make_episodes(binary, work, a.max_questions)
        rl = work / "rl.jsonl"
        log(f"rl: {export(binary, 'rl', episodes, rl, True)}")
        server = JailServer(binary, work)
        msg, problems = check_rl_rollouts(server.endpoint, rl, episodes, a.rl_rollouts)
    except SetupError as e:
        log(f"SET-UP FAILED: {e}")
        return 2
    finally:
        if server is not None:
            server.stop()
        if not a.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    log(f"rl rollouts in the jail: {msg}")
    for p in problems:
        log(f"PROBLEM: {p}")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=Path, help="episodes file; default: make one (see --max-questions)")
    ap.add_argument("--bin", help="csv-agent binary (default target/release/csv-agent, then target/debug)")
    ap.add_argument("--formats", default=",".join(ALL_FORMATS), help="comma-separated formats to train")
    ap.add_argument("--max-questions", type=int, default=20, help="for the episodes run (per dataset)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rl-steps", type=int, default=10, help="GRPO steps (each generates 4 completions)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3, help="SFT, PRM, ORM, GRPO learning rate")
    ap.add_argument("--pref-lr", type=float, default=1e-4, help="DPO and KTO learning rate")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--vocab-size", type=int, default=4000)
    ap.add_argument("--work-dir", type=Path, help="keep exports and outputs here (default: a temp dir, removed)")
    ap.add_argument("--verbose", action="store_true", help="print the trainers' log line of every step")
    ap.add_argument("--report", type=Path, help="also write the results (JSON, then the Markdown table) to this file")
    ap.add_argument("--rl-rollouts", type=int, default=40, help="verified rl rows rolled out with their gold program")
    ap.add_argument("--rl-rollouts-only", action="store_true",
                    help="only export rl and roll it out in the jail (no training libraries needed)")
    a = ap.parse_args()
    if a.rl_rollouts_only:
        return rollouts_only(a)

    t_all = time.monotonic()
    formats = [f for f in a.formats.split(",") if f]
    bad = [f for f in formats if f not in ALL_FORMATS]
    if bad:
        log(f"unknown format(s): {bad}")
        return 2
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="validate-formats-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "hf-datasets-cache"))

    import datasets
    import tokenizers
    import torch
    import transformers
    import trl

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
                "trl": trl.__version__, "datasets": datasets.__version__, "tokenizers": tokenizers.__version__}
    log("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    try:
        binary = find_bin(a.bin)
        log(f"binary: {binary}")
        episodes = a.episodes.resolve() if a.episodes else make_episodes(binary, work, a.max_questions)
        if not episodes.is_file():
            raise SetupError(f"no episodes file {episodes}")
        st = episode_stats(episodes)
        log(f"episodes: {st['episodes']} ({st['verified']} verified, {st['unverified']} unverified); "
            f"by template (verified, unverified): "
            + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(st["by_template"].items())))

        # 1. export every format (reward formats with and without unverified
        #    episodes, to show where the negatives come from) and the openai flavors
        exports: dict[str, Path] = {}
        log("\n== exports")
        for fmt in ALL_FORMATS:
            unv = fmt in WITH_UNVERIFIED
            path = work / f"{fmt}.jsonl"
            msg = export(binary, fmt, episodes, path, unv)
            exports[fmt] = path
            extra = ""
            if unv:
                p2 = work / f"{fmt}.verified-only.jsonl"
                export(binary, fmt, episodes, p2, False)
                extra = f"; verified only: {count_lines(p2)} rows"
            log(f"{fmt:16} {'--include-unverified ' if unv else '':21} {count_lines(path):4} rows{extra}   [{msg}]")
        for fmt in ("sft-tools", "dpo"):
            path = work / f"{fmt}.openai.jsonl"
            export(binary, fmt, episodes, path, fmt in WITH_UNVERIFIED, "openai")
            exports[f"{fmt}/openai"] = path
            log(f"{fmt + '/openai':16} {'--include-unverified ' if fmt in WITH_UNVERIFIED else '':21} {count_lines(path):4} rows")
    except SetupError as e:
        log(f"SET-UP FAILED: {e}")
        return 2

    # 2. load with datasets and check columns
    from datasets import load_dataset

    log("\n== load_dataset('json') and column checks")
    loaded: dict = {}
    problems: list[str] = []
    for key, path in exports.items():
        fmt, _, flavor = key.partition("/")
        if count_lines(path) == 0:
            log(f"{key:16} EMPTY: the export wrote 0 rows")
            continue
        try:
            ds = load_dataset("json", data_files=str(path), split="train")
            note = check_columns(fmt, ds, flavor or None)
            lc = label_counts(fmt, ds) if not flavor else ""
            log(f"{key:16} {len(ds):4} rows  {note}{'; ' + lc if lc else ''}")
            if not flavor:
                loaded[fmt] = ds
        except Exception as e:  # noqa: BLE001
            problems.append(f"{key}: load/check failed: {type(e).__name__}: {e}")
            log(f"{key:16} LOAD/CHECK FAILED: {type(e).__name__}: {e}")

    # 3. tokenizer
    t0 = time.monotonic()
    tok = train_tokenizer(corpus(loaded), a.vocab_size)
    log(f"\n== tokenizer: byte-level BPE, {len(tok)} tokens, trained on the exports in {time.monotonic() - t0:.1f}s; "
        "chat template: Qwen2.5 (from TRL)")
    for fmt in ("sft", "sft-tools", "sft-interleaved"):
        if fmt in loaded:
            lens = [len(tok.apply_chat_template(r["messages"], tools=r.get("tools"), tokenize=True,
                                                return_dict=True)["input_ids"]) for r in loaded[fmt]]
            over = sum(n > a.max_length for n in lens)
            log(f"{fmt:16} tokens per record: max {max(lens)}, mean {sum(lens) / len(lens):.0f}; "
                f"{over} over --max-length {a.max_length} (truncated)")
    # What the trainers rely on: the prompt's tokens (with the generation
    # prompt) are a prefix of prompt + completion, so the completion mask is right.
    for fmt, sides in (("dpo", ("chosen", "rejected")), ("kto", ("completion",))):
        if fmt not in loaded:
            continue
        bad_rows = []
        for i, r in enumerate(loaded[fmt]):
            p = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
            for side in sides:
                full = tok.apply_chat_template(r["prompt"] + r[side], tokenize=True, return_dict=True)["input_ids"]
                if full[:len(p)] != p:
                    bad_rows.append(f"row {i} {side}")
        if bad_rows:
            problems.append(f"{fmt}: the prompt is not a token prefix of prompt + completion: {bad_rows[:5]}")
        log(f"{fmt:16} prompt is a token prefix of prompt + {'/'.join(sides)}: "
            + ("yes, every row" if not bad_rows else f"NO for {len(bad_rows)}: {bad_rows[:5]}"))

    # 4. train (the rl rollouts run in the jail: csv-agent serve)
    global JAIL_REWARD
    server = None
    if "rl" in formats and "rl" in loaded and JAIL_REWARD is None:
        try:
            server = JailServer(binary, work)
            msg, rl_problems = check_rl_rollouts(server.endpoint, exports["rl"], episodes, a.rl_rollouts)
            log(f"\n== rl rollouts in the jail: {msg}")
            problems += rl_problems
            JAIL_REWARD = client_module().make_grpo_reward(server.endpoint, datasets_root=str(REPO))
        except SetupError as e:
            problems.append(f"rl: {e}")
    results = []
    for fmt in formats:
        trainer_name, fn = TRAINERS[fmt]
        row = {"format": fmt, "trainer": trainer_name, "rows": 0, "steps": 0, "start": None, "end": None,
               "start5": None, "end5": None,
               "time": 0.0, "status": "ok", "note": ""}
        results.append(row)
        ds = loaded.get(fmt)
        if ds is None:
            row["status"] = "not run"
            row["note"] = "the export wrote 0 rows" if count_lines(exports[fmt]) == 0 else "did not load"
            if fmt in ("dpo", "kto") and "kto" in loaded:
                ds = synth_negatives(fmt, None, loaded["kto"])
                row["note"] += "; trained on SYNTHETIC negatives (another question's completion)"
                row["status"] = "ok (synthetic)"
            if ds is None or len(ds) == 0:
                log(f"\n== {fmt}: NOT RUN: {row['note']}")
                row["status"] = "not run"
                continue
        if fmt == "kto" and not (0 < sum(ds["label"]) < len(ds)):
            ds = synth_negatives("kto", ds, ds)
            row["note"] = "no false label in the export; added SYNTHETIC negatives (another question's completion)"
            row["status"] = "ok (synthetic)"
        if fmt == "prm" and all(x for r in ds for x in r["labels"]):
            row["note"] = "no false step label in the export: only the positive class was trained"
        row["rows"] = len(ds)
        log(f"\n== {fmt}: {trainer_name} on {len(ds)} rows")
        t0 = time.monotonic()
        try:
            trainer = fn(ds, tok, work / f"out-{fmt}", a)
            if not a.verbose:
                from transformers.trainer_callback import PrinterCallback
                trainer.remove_callback(PrinterCallback)
            trainer.train()
            hist = trainer.state.log_history
            row["steps"] = trainer.state.global_step
            row["start"], row["end"] = losses(hist, "loss")
            row["start5"], row["end5"] = losses(hist, "loss", 5)
            if fmt == "rl":
                r0, r1 = losses(hist, "reward")
                row["note"] = (f"reward {fmt_loss(r0)} → {fmt_loss(r1)}; {RL_SEEN['rollouts']} completions "
                               f"rolled out in the jail ({RL_SEEN['with_code']} with code); reward fn got answer_hash, "
                               f"{RL_SEEN.get('gt')} ground-truth hashes, {RL_SEEN.get('hooks')} hook hashes, "
                               f"dataset {RL_SEEN.get('dataset')}")
            if row["start"] is None or not all(math.isfinite(x) for x in (row["start"], row["end"])):
                raise RuntimeError(f"no finite loss in the log history: {hist[:3]}")
        except Exception as e:  # noqa: BLE001
            row["status"] = "FAILED"
            row["note"] = f"{type(e).__name__}: {e}".strip()[:2000]
            traceback.print_exc()
        row["time"] = time.monotonic() - t0
        log(f"-- {fmt}: {row['status']}, {row['steps']} steps, loss {fmt_loss(row['start'])} → "
            f"{fmt_loss(row['end'])}, {row['time']:.1f}s {row['note']}")

    if server is not None:
        server.stop()

    # 5. report
    head = "| format | trainer | rows | steps | loss start | loss end | mean of first 5 → last 5 | time |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| `{r['format']}` | {r['trainer']} | {r['rows']}{' (synthetic negatives)' if 'synthetic' in r['status'] else ''} | {r['steps']} | {fmt_loss(r['start'])} | "
                     f"{fmt_loss(r['end'])} | {fmt_loss(r['start5'])} → {fmt_loss(r['end5'])} | {r['time']:.1f} s |")
    table = "\n".join(lines)
    log("\n== result\n" + table)
    for r in results:
        if r["note"]:
            log(f"- {r['format']}: {r['status']}: {r['note']}")
    failed = [r for r in results if r["status"] in ("FAILED", "not run")]
    total = time.monotonic() - t_all
    log(f"\ntotal {total:.0f}s; " + ("all trainers ran" if not failed and not problems else
                                     "FAILED: " + "; ".join([f"{r['format']} ({r['trainer']}): {r['note']}"
                                                            for r in failed] + problems)))
    if a.report:
        a.report.write_text(json.dumps({"versions": versions, "episodes": st, "total_s": round(total, 1),
                                          "results": results}, indent=1, default=str) + "\n\n" + table + "\n")
    if not a.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
