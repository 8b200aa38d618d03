"""The Ray jobs: ``extract`` (Ray Data: decode → encode → write), ``score`` (Ray
Data), ``train`` (Ray Train), ``cluster`` (joining or starting Ray; sharing weights)."""
