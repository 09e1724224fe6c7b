"""HellaSwag (gptlab.hellaswag): the batched scorer equals a plain one-ending-at-a-time reference on transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptlab import hellaswag
from gptlab.cli import main
from gptlab.config import GPTConfig
from gptlab.data import DataError
from gptlab.model import GPT
from gptlab.tokenizer import get_tokenizer

# Hand-written items in the official hellaswag_val.jsonl schema (the fields the file has, most unused by scoring).
ITEMS = [
    ("Removing ice from car", "Then, the man writes over the snow covering the window of a car, and a woman",
     ["wearing winter clothes smiles.", "puts a pen in the box.", "sits down in a chair.", "is seen ice fishing."], 0),
    ("Baking cookies", "A woman pours flour into a bowl. She",
     ["mixes it with eggs and sugar.", "drives to the beach.", "paints the ceiling blue.", "jumps."], 0),
    ("Washing dishes", "A man stands at the sink. He turns on the water and",
     ["rinses the plates one by one before stacking them on the rack to dry", "flies away.", "sings.",
      "reads a newspaper about the weather in another country far away"], 0),
    ("Playing guitar", "A boy sits on the bed holding a guitar. He",
     ["tunes the strings.", "eats the guitar.", "swims.", "becomes a tree."], 1),
    ("Running a marathon", "Hundreds of runners line up at the start. " * 12 + "When the gun fires, they",
     ["start running down the road.", "fall asleep.", "bake a cake.", "stop."], 3),  # past block_size 64
]


def write_items(path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, (activity, ctx, endings, label) in enumerate(ITEMS):
            f.write(json.dumps({"ind": 24 + i, "activity_label": activity, "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
                                "endings": endings, "source_id": f"activitynet~v_{i}", "split": "val",
                                "split_type": "indomain", "label": label}) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[GPT, Path]:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config).eval()
    directory = tmp_path_factory.mktemp("hf")
    model.save_pretrained(directory)
    return model, directory


def reference(directory: Path, items: list[tuple], block: int) -> tuple[list[list[float]], list[list[int]]]:
    """Per example, per ending, one forward of transformers' GPT-2 on the same weights: the summed cross-entropy of
    the ending's tokens (" " + ending, after the context; the last `block` tokens of a longer row)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(directory).eval()
    enc = get_tokenizer("gpt2")
    sums, counts = [], []
    for _, ctx, endings, _ in items:
        sums.append([])
        counts.append([])
        for ending in endings:
            ctx_tokens, end_tokens = enc.encode(ctx), enc.encode(" " + ending)
            row = (ctx_tokens + end_tokens)[-block:]
            with torch.no_grad():
                logp = torch.log_softmax(hf(torch.tensor([row])).logits[0].double(), -1)
            first = len(row) - len(end_tokens)  # where the ending starts in the row
            losses = [-logp[p - 1, row[p]].item() for p in range(max(first, 1), len(row))]
            sums[-1].append(sum(losses))
            counts[-1].append(len(losses))
    return sums, counts


def test_batched_scores_equal_one_forward_per_ending_on_transformers(tiny, tmp_path: Path) -> None:
    model, directory = tiny
    examples = hellaswag.load(write_items(tmp_path / "hellaswag_val.jsonl"), get_tokenizer("gpt2"))
    assert len(examples[4].context) + len(examples[4].endings[0]) > 64  # one row is cut to the block
    ref_sums, ref_counts = reference(directory, ITEMS, 64)
    for batch in (1, 3):  # one example per forward, or several padded to one length
        sums, counts = hellaswag.ending_losses(model, examples, batch_examples=batch)
        assert counts.tolist() == ref_counts
        torch.testing.assert_close(sums, torch.tensor(ref_sums, dtype=torch.float64), rtol=1e-5, atol=1e-4)
    labels = [item[3] for item in ITEMS]
    ref = torch.tensor(ref_sums)
    acc = sum(int(ref[i].argmin()) == labels[i] for i in range(len(ITEMS))) / len(ITEMS)
    acc_norm = sum(int((ref[i] / torch.tensor(ref_counts[i])).argmin()) == labels[i] for i in range(len(ITEMS)))
    assert hellaswag.evaluate(model, examples) == {"acc": acc, "acc_norm": acc_norm / len(ITEMS), "n": len(ITEMS)}


def test_acc_takes_the_summed_loss_and_acc_norm_the_mean() -> None:
    # ending 0: 4 tokens of loss 1 (sum 4, mean 1); ending 1: 1 token of loss 2 (sum 2, mean 2)
    sums = torch.tensor([[4.0, 2.0, 9.0, 9.0], [4.0, 2.0, 9.0, 9.0]], dtype=torch.float64)
    counts = torch.tensor([[4, 1, 1, 1], [4, 1, 1, 1]])
    assert hellaswag.score(sums, counts, [1, 0]) == (1, 1)  # acc right on the first, acc_norm on the second


def test_eval_cli_and_training_report_hellaswag(tiny, tmp_path: Path, capsys, monkeypatch) -> None:
    from gptlab import train as T
    from gptlab.data import shakespeare_text
    from gptlab.hardware import bf16_autocast_pays

    file = write_items(tmp_path / "hellaswag_val.jsonl")
    _, directory = tiny
    model = GPT.from_pretrained(directory)
    evaluate, autocast_on = hellaswag.evaluate, []
    monkeypatch.setattr(hellaswag, "evaluate", lambda *a, **k: autocast_on.append(torch.is_autocast_enabled("cpu"))
                        or evaluate(*a, **k))
    # --dtype (auto: bf16 autocast where training would use it): the scores under the autocast the output names.
    auto = "bfloat16" if bf16_autocast_pays(torch.device("cpu")) else "float32"
    for dtype, named in (("auto", auto), ("float32", "float32"), ("bfloat16", "bfloat16")):
        assert main(["eval", str(directory), f"--hellaswag={file}", "--json", f"--dtype={dtype}"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["dtype"] == named and autocast_on.pop() == (named == "bfloat16"), dtype
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=named == "bfloat16"):
            expected = evaluate(model, hellaswag.load(file, get_tokenizer("gpt2")))
        assert {k: result[k] for k in ("acc", "acc_norm", "n")} == expected and result["n"] == 5
    assert main(["eval", str(directory), f"--hellaswag={file}"]) == 0
    assert "5 examples" in capsys.readouterr().out

    (tmp_path / "input.txt").write_text(shakespeare_text()[:20_000], encoding="utf-8")
    flags = ["--preset=tiny", f"--data.path={tmp_path / 'input.txt'}", "--data.tokenizer=gpt2",
             f"--data.cache_dir={tmp_path / 'cache'}", "--trainer.device=cpu", "--trainer.sample_tokens=0",
             "--trainer.max_iters=2", "--trainer.eval_interval=1", "--trainer.eval_iters=1",
             f"--trainer.hellaswag={file}", f"--system.work_dir={tmp_path / 'run'}"]
    assert T.main(flags) == 0
    assert "HellaSwag acc_norm" in capsys.readouterr().out
    rows = [r for r in T.read_metrics(tmp_path / "run") if "val_loss" in r]
    assert [r["iter"] for r in rows] == [0, 1, 2]
    trained = GPT.from_pretrained(tmp_path / "run" / "last")
    last = hellaswag.evaluate(trained, hellaswag.load(file, get_tokenizer("gpt2")))
    assert (rows[-1]["hellaswag_acc"], rows[-1]["hellaswag_acc_norm"]) == (last["acc"], last["acc_norm"])


def test_bad_hellaswag_files_are_one_line_errors(tiny, tmp_path: Path, capsys) -> None:
    _, directory = tiny
    good = json.dumps({"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 2})
    cases = {
        "missing": (None, "HellaSwag file not found"),
        "not json": (f"{good}\n{{oops\n", "line 2 is not JSON"),
        "3 endings": (f"{good}\n\n" + json.dumps({"ctx": "x", "endings": ["a", "b", "c"], "label": 0}),
                      "line 3 is not a HellaSwag item: it needs 'ctx' (a string), 'endings' (4 strings)"),
        "label": (json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 4}), "line 1 is not a HellaSwag"),
        "empty": ("\n", "holds no HellaSwag items"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        if text is not None:
            path.write_text(text, encoding="utf-8")
        assert main(["eval", str(directory), f"--hellaswag={path}"]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("gptlab: error: ") and err.count("\n") == 1 and message in err, (name, err)
    from gptlab.tokenizer import CharTokenizer

    with pytest.raises(DataError, match="needs a tokenizer for English text"):
        hellaswag.tokenize(json.loads(f"[{good}]"), CharTokenizer("ab"))
