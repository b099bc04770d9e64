"""The inference channel: actors' observation rows to a batched policy server, actions back
(`RemotePolicy` is the client; the server is `relayrl_gym.models.inference_server`)."""
