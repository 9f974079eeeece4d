"""quotaplane: quota-and-billing control plane for metered APIs."""
