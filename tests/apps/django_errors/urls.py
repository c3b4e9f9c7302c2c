from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("crash", views.crash),
    path("missing-object", views.missing_object),
    path("forbidden", views.forbidden),
    path("suspicious", views.suspicious),
    path("get-only", views.get_only),
    path("own-json", views.own_json),
    path("upload", views.upload),
]
