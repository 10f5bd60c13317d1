"""Chapter 5's evaluation family: measure a model the way the field does, so our numbers sit beside published ones.

    sandbox      run untrusted (model-written) Python in its own limited process: wall clock, memory, output,
                 process count, a fresh uid, no network, destructive calls disabled, a nonce for "ran to the end"
                 (notebook 03)
    humaneval    HumanEval: completions from our model cut at the stop sequences, checked in the sandbox, and the
                 unbiased pass@k estimator (notebook 03)
    mmlu         MMLU: the standard prompt, scoring by the log-likelihood of " A".." D", zero- and few-shot, micro
                 and macro averages, bootstrap confidence intervals (notebook 02)
    perplexity   token-level NLL, perplexity, bits per byte, sliding-window evaluation with a stride (notebook 01)
    contamination  word n-gram overlap between training corpora and benchmark items, with chapter 2's hashing
                 (notebook 04)
"""
