"""A deal between a buyer's and a seller's account (no migrations: the test
database creates its table)."""

from django.db import models

from project.broker.models import Account


class Deal(models.Model):
    buyer = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="bought")
    seller = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="sold")
    symbol = models.CharField(max_length=64)
    price = models.DecimalField(max_digits=18, decimal_places=6)
    status = models.CharField(max_length=10, default="open")

    class Meta:
        app_label = "exchange"
