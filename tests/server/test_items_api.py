"""GET /items end to end (tiny synthetic checkpoints: ids 1000..1049, popularity falling with the
id, titles "Item 1000".."Item 1009" only), and the Catalog index behind it."""

from __future__ import annotations

import pytest

from server.catalog import Catalog, CatalogItem
from server_helpers import ITEM_IDS

TITLED = ITEM_IDS[:10]  # the items with a title, most popular first


def get_items(client, **params):
    response = client.get("/items", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def ids(answer):
    return [item["item_id"] for item in answer["items"]]


def test_search_is_case_insensitive_and_ordered_by_popularity(client):
    answer = get_items(client, q="iTEM 100")
    assert ids(answer) == TITLED  # "Item 1000".."Item 1009": every titled item
    assert [i["popularity_rank"] for i in answer["items"]] == list(range(1, 11))
    assert answer["items"][0] == {"item_id": "1000", "title": "Item 1000", "popularity_rank": 1}
    assert ids(get_items(client, q="  ITEM 1003 ")) == ["1003"]
    assert get_items(client, q="no such title") == {
        "model": "plr", "total": 0, "limit": 20, "offset": 0, "items": []}


def test_pages_cover_every_match_once(client):
    pages = [get_items(client, q="item", limit=4, offset=offset) for offset in (0, 4, 8, 12)]
    assert [p["total"] for p in pages] == [10] * 4
    assert [len(p["items"]) for p in pages] == [4, 4, 2, 0]
    assert sum((ids(p) for p in pages), []) == TITLED


def test_empty_query_browses_the_whole_catalogue_by_popularity(client):
    answer = get_items(client, limit=100)
    assert answer["total"] == len(ITEM_IDS) and ids(answer) == ITEM_IDS
    assert answer["items"][-1] == {"item_id": ITEM_IDS[-1], "title": None,
                                   "popularity_rank": len(ITEM_IDS)}


def test_ids_are_looked_up_in_the_order_given(client):
    answer = get_items(client, ids="1012, 1003,1012", model="sasrec")
    assert answer["model"] == "sasrec" and ids(answer) == ["1012", "1003", "1012"]
    assert [i["title"] for i in answer["items"]] == [None, "Item 1003", None]


@pytest.mark.parametrize("params,field,words", [
    ({"limit": 0}, "limit", "greater than or equal to 1"),
    ({"limit": 101}, "limit", "less than or equal to 100"),
    ({"limit": "ten"}, "limit", "integer"),
    ({"offset": -1}, "offset", "greater than or equal to 0"),
    ({"q": "x" * 201}, "q", "at most 200"),
    ({"ids": ",".join(ITEM_IDS * 3)}, "ids", "the limit is 100"),
    ({"ids": "1000", "q": "item"}, "ids", "not both"),
])
def test_bad_parameters_are_a_422_naming_the_field_and_the_limit(client, params, field, words):
    response = client.get("/items", params=params)
    assert response.status_code == 422, response.text
    [detail] = response.json()["detail"]
    assert detail["loc"] == ["query", field] and words in detail["msg"]


def test_unknown_ids_are_a_422_listing_them(client):
    response = client.get("/items", params={"ids": "1000,nope,1001,nope"})
    assert response.status_code == 422
    [detail] = response.json()["detail"]
    assert detail["loc"] == ["query", "ids"] and detail["input"] == ["nope"]


def test_unknown_model_is_a_404(client):
    response = client.get("/items", params={"q": "item", "model": "gpt"})
    assert response.status_code == 404
    assert response.json()["detail"] == "unknown model 'gpt'; available: ['plr', 'sasrec']"


def test_api_key_guards_items_but_not_the_page(make_client):
    client = make_client(api_key="s3cret")
    assert client.get("/items", params={"q": "item"}).status_code == 401
    wrong = client.get("/items", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = client.get("/items", params={"q": "item"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["total"] == 10
    for path in ("/", "/static/playground.js", "/static/playground.css"):
        assert client.get(path).status_code == 200, path


def test_items_is_in_the_openapi_schema(client):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/items"]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert set(params) == {"q", "ids", "limit", "offset", "model"}
    assert params["limit"]["maximum"] == 100 and params["limit"]["minimum"] == 1
    response_schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert response_schema["$ref"].endswith("/ItemsResponse")


def test_every_response_says_its_server_time(client):
    for response in (client.get("/items"), client.get("/items", params={"limit": 0}),
                     client.post("/recommend", json={"history": ["1000"]})):
        name, _, value = response.headers["server-timing"].partition(";dur=")
        assert name == "app" and float(value) >= 0


# -- the index itself ------------------------------------------------------------------------------

def catalog(*titles):
    return Catalog([CatalogItem(str(i), title, i) for i, title in enumerate(titles, start=1)])


def test_a_title_matching_twice_counts_once_and_order_is_rank_order():
    cat = catalog("Abba: Abba Gold", "Gold Rush", None, "Goldfinger")
    assert cat.search("ABBA", 10) == (1, [cat.items[0]])
    total, page = cat.search("gold", 10)
    assert total == 3 and [i.item_id for i in page] == ["1", "2", "4"]
    assert cat.search("gold", 1, offset=2) == (3, [cat.items[3]])


def test_no_match_spans_two_titles_and_folding_is_unicode_aware():
    cat = catalog("Ends with a", "b starts this", "Line\nbreak", "Straße")
    assert cat.search("a\nb", 10) == (0, [])  # would span titles 1 and 2 in the joined index
    assert cat.search("line break", 10)[0] == 1
    assert cat.search("STRASSE", 10)[0] == 1


def test_lookup_and_length():
    cat = catalog("One", None)
    assert len(cat) == 2 and cat.lookup("2") == CatalogItem("2", None, 2)
    assert cat.lookup("3") is None
