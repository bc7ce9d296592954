"""Staged rollouts of a channel's release: the policy (pure), its signed stage share, its control."""
