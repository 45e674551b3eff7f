"""Locust user for benchmarks/serving_load.py: POST /recommend for random known users."""
import random

from locust import FastHttpUser, constant, task


class Recommend(FastHttpUser):
    wait_time = constant(0)

    @task
    def recommend(self):
        user = f"u{random.randrange(2000):06d}"
        self.client.post("/recommend", json={"user_id": user, "k": 10}, name="/recommend")
