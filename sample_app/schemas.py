"""Pydantic response models: the lean ones the API needs, and tip 3's large nested ones."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class _FromRows(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ProductOut(_FromRows):
    id: int
    sku: str
    name: str
    category: str
    price_cents: int


class ProductFull(ProductOut):
    description: str


class CustomerOut(_FromRows):
    id: int
    name: str
    city: str


class CustomerFull(CustomerOut):
    email: str
    joined_at: datetime


class LineOut(_FromRows):
    product_id: int
    quantity: int
    unit_price_cents: int


class LineFull(LineOut):
    id: int
    order_id: int
    product: ProductFull


class OrderSummary(_FromRows):
    id: int
    reference: str
    status: str
    placed_at: datetime
    total_cents: int


class OrderFull(OrderSummary):
    """Everything reachable from an order: what a client rarely needs and every request pays for."""

    customer_id: int
    customer: CustomerFull
    lines: list[LineFull]


class PopularProduct(BaseModel):
    product: ProductOut
    units_sold: int


class ShippingQuote(BaseModel):
    order_id: int
    carrier: str
    price_cents: int


class OrderTotal(BaseModel):
    order_id: int
    currency: str
    total: float


class Recommendation(BaseModel):
    customer_id: int
    product_ids: list[int]


class Storefront(BaseModel):
    title: str
    scripts: list[str]
    stylesheets: list[str]
    featured: list[ProductOut]


class LineWithProduct(LineOut):
    product: ProductOut


class OrderWithLines(OrderSummary):
    lines: list[LineWithProduct]
