"""Evaluation of a trained SDN: held-out summaries now, the independent attacker later."""
