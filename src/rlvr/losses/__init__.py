"""Policy losses, one plugin each (`loss=ppo_clip|gspo`): token log-probs, old log-probs and advantages in,
one scalar out. Aggregation over tokens and the KL term are options of every loss (`base.PolicyLoss`)."""
