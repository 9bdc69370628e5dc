# Every existing login gets one epoch (the default is evaluated once for the
# rows already there); that is enough: an epoch only has to differ from the
# epochs a client may hold, and before this migration clients held none.

from django.db import migrations, models

import broker_ws.models


class Migration(migrations.Migration):
    dependencies = [
        ("broker_ws", "0003_broadcast"),
    ]

    operations = [
        migrations.AddField(
            model_name="loginsequence",
            name="epoch",
            field=models.CharField(default=broker_ws.models.new_epoch, max_length=32),
        ),
    ]
