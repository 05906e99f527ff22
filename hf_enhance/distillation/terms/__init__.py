"""Components `DistillationTrainer` owns: the hidden-state term (`HiddenStateTerm`, its blocks) and on-policy
sampling (`OnPolicySampler`, with the prompt/completion collator)."""
