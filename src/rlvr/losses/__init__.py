"""Policy losses, one plugin each (`loss=ppo_clip|gspo|cispo|sapo|gmpo|clip_cov|kl_cov`): token log-probs, old
log-probs and advantages in, one scalar out. Aggregation over tokens, the KL term and top-entropy token masking
are options of every loss (`base.PolicyLoss`)."""
