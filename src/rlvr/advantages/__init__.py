"""Advantage estimators, one plugin each (`advantage=grpo|sgpo|rloo|reinforce_pp|reinforce_pp_baseline|opo|gpg|passk`):
the scored roll-out batch in, [N, C] advantages on its loss tokens out (`base.AdvantageEstimator`)."""
