"""Operations around the ML core: processes and servers, containers, Kubernetes launches and rollouts, the
pipeline steps' data plane, and the Trainer played without a cluster. Nothing in the ML core imports this package."""
