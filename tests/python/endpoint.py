"""Unmodified Hugging Face clients against a node's Hub endpoint (HF_ENDPOINT). Called by
tests/tests/endpoint.rs.

Usage: endpoint.py MODE ARGS...
  errors CACHE                  each error case; prints {case: exception class name}
  file CACHE REPO PATH          hf_hub_download; prints the path
  make-tiny DIR                 writes a tiny tokenizer + config made by transformers itself
  transformers CACHE REPO       AutoConfig and AutoTokenizer.from_pretrained; prints JSON
  datasets CACHE REPO           datasets.load_dataset; prints JSON (rows, columns)
"""
import json
import os
import sys

mode, *args = sys.argv[1:]


def error_class(call):
    try:
        call()
        return "ok"
    except Exception as e:  # the class is what the test checks
        return type(e).__name__


if mode == "errors":
    from huggingface_hub import hf_hub_download

    (cache,) = args

    def get(repo, filename, **kw):
        return lambda: hf_hub_download(repo, filename, cache_dir=cache, **kw)

    cases = {
        "repo_not_found": get("org/nope", "config.json"),
        "revision_not_found": get("org/model", "config.json", revision="no-such-branch"),
        "entry_not_found": get("org/model", "no-such-file.json"),
        "gated_without_token": get("org/gated", "config.json", token=False),
        "gated_with_bad_token": get("org/gated", "config.json", token="hf_bad"),
        "gated_with_token": get("org/gated", "config.json", token="hf_good"),
    }
    print(json.dumps({k: error_class(v) for k, v in cases.items()}))
elif mode == "file":
    from huggingface_hub import hf_hub_download

    cache, repo, path = args
    print(hf_hub_download(repo, path, cache_dir=cache))
elif mode == "make-tiny":
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, PreTrainedTokenizerFast

    (out,) = args
    vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "swarm", "world", "!"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(out)
    GPT2Config(vocab_size=len(vocab), n_layer=1, n_head=1, n_embd=8).save_pretrained(out)
elif mode == "transformers":
    from transformers import AutoConfig, AutoTokenizer

    cache, repo = args
    config = AutoConfig.from_pretrained(repo, cache_dir=cache)
    tokenizer = AutoTokenizer.from_pretrained(repo, cache_dir=cache)
    print(
        json.dumps(
            {
                "model_type": config.model_type,
                "n_embd": config.n_embd,
                "ids": tokenizer("hello swarm world !")["input_ids"],
            }
        )
    )
elif mode == "datasets":
    import datasets

    cache, repo = args
    ds = datasets.load_dataset(repo, cache_dir=cache, split="train")
    print(json.dumps({"rows": ds.num_rows, "columns": ds.column_names, "first": ds[0]}))
else:
    print(f"unknown mode {mode}", file=sys.stderr)
    sys.exit(1)
