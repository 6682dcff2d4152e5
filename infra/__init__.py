"""The CDK app that deploys fedasync's server stack and the per-client queues and roles."""
