"""The class-score tree: which next-token log-probabilities a class's score sums, and which requests that takes
(the served scores themselves are checked against transformers in test_eval_server.py)."""

import pytest

from dermvlm.evaluation.class_scores import ClassScoreError, choice_paths, tree

A, END = 100, 101  # "<answer>", "</answer>"


def test_names_that_differ_at_their_first_token_take_one_request():
    paths = choice_paths({"bcc": [A, 7, END], "mel": [A, 8, 9, END], "nv": [A, 10, END]})
    assert paths == {"bcc": [((A,), 7)], "mel": [((A,), 8)], "nv": [((A,), 10)]}
    assert tree(paths) == {(A,): {7, 8, 10}}


def test_a_shared_word_is_read_once_and_the_names_part_where_they_differ():
    paths = choice_paths({"melanoma": [A, 5, 6, END], "nevus": [A, 5, 7, 8, END], "bcc": [A, 9, END]})
    assert paths["melanoma"] == [((A,), 5), ((A, 5), 6)]
    assert paths["nevus"] == [((A,), 5), ((A, 5), 7)]  # what follows the token that sets it apart is not scored
    assert paths["bcc"] == [((A,), 9)]
    assert tree(paths) == {(A,): {5, 9}, (A, 5): {6, 7}}


def test_a_name_that_begins_another_is_told_apart_by_its_closing_tag():
    paths = choice_paths({"mel": [A, 5, END], "mis": [A, 5, 6, 7, END]})
    assert tree(paths) == {(A, 5): {END, 6}}  # the shared "<answer>melanoma" is common to both: not scored


def test_without_a_shared_prefix_the_first_read_is_the_answer_start():
    assert tree(choice_paths({"a": [1, 2], "b": [3, 2]})) == {(): {1, 3}}


def test_candidates_with_the_same_tokens_are_refused_with_both_names():
    with pytest.raises(ClassScoreError, match=r"'nv'.*'nevus'|'nevus'.*'nv'"):
        choice_paths({"nv": [A, 5, END], "nevus": [A, 5, END], "bcc": [A, 9, END]})
