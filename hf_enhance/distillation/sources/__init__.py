"""Where the teacher's outputs come from besides a live forward: logit caches (causal LM top-k, classifier logits)
and teacher-written texts."""
