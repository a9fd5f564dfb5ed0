#!/bin/sh
# The whole "service": prints the greeting baked into the image (or the default).
if [ -r /etc/greeting ]; then cat /etc/greeting; else echo "hello from docker-app"; fi
