"""The demo's synthetic world (research_r1.world): seeded, sized as asked, every answer in its
corpus, train and held-out people apart; and its scripted cold-start agent, which answers every
question by searching with the real retriever, or plays the flaws it is told to."""

from __future__ import annotations

import re

from research_r1.protocol import extract_answer
from research_r1.retrieval.corpus import split_contents
from research_r1.rollout import RolloutConfig, encode_prompt, run_rollout
from research_r1.world import FACTS, KINDS, ScriptedAgent, build_world, read_fact


def passage_texts(world) -> dict[str, set[str]]:
    """Each title's passage texts."""
    texts: dict[str, set[str]] = {}
    for passage in world.passages:
        title, text = split_contents(passage["contents"])
        texts.setdefault(title, set()).add(text)
    return texts


def test_same_seed_same_world_other_seed_other_world():
    first, again = build_world(3, num_people=60), build_world(3, num_people=60)
    other = build_world(4, num_people=60)
    assert first.passages == again.passages
    assert first.train == again.train and first.test == again.test
    assert first.passages != other.passages
    assert [q.question for q in first.test] != [q.question for q in other.test]


def test_world_sizes_and_corpus_rows():
    world = build_world(0, num_people=60, num_test_questions=20)
    assert len(world.passages) == 60 * len(FACTS)
    assert [p["id"] for p in world.passages] == [str(i) for i in range(180)]
    assert all(re.fullmatch(r'"[A-Z][a-z]+"\n.+\.', p["contents"]) for p in world.passages)
    assert len(world.train) == 45 * len(KINDS)  # every kind for every training person
    assert len(world.test) == 20
    assert sorted(q.kind for q in world.test) == sorted(list(KINDS) * 4)  # balanced kinds


def test_every_answer_is_in_the_corpus_and_two_hop_goes_through_the_bridge():
    world = build_world(1, num_people=60)
    texts = passage_texts(world)
    for question in world.train + world.test:
        relations = KINDS[question.kind][1]
        subject = question.chain[0]
        if len(relations) == 1:
            fact = FACTS[relations[0]].format(name=subject, value=question.answer)
            assert fact in texts[subject]
        else:
            bridge = question.chain[1]
            assert FACTS["mentor"].format(name=subject, value=bridge) in texts[subject]
            # The bridge person's own passage holds the final answer.
            assert FACTS[relations[1]].format(name=bridge, value=question.answer) in texts[bridge]


def test_train_and_held_out_questions_share_no_person():
    world = build_world(2, num_people=80)

    def people(questions):
        named = set()
        for q in questions:
            named |= set(q.chain)
            if q.answer in world.people:
                named.add(q.answer)
        return named

    train, test = people(world.train), people(world.test)
    assert train and test and not train & test


def test_read_fact_reads_the_named_persons_passage():
    observation = (
        "Doc 1(Title: Zed) The mentor of Zed is Kal.\nDoc 2(Title: Kal) The mentor of Kal is Mira."
    )
    assert read_fact(observation, "mentor", "Kal") == ("Kal", "Mira")
    assert read_fact(observation, "mentor", None) == ("Zed", "Kal")
    assert read_fact(observation, "born", "Kal") is None


def play(demo_world, behaviour):
    world, tokenizer, template = demo_world.world, demo_world.tokenizer, demo_world.template
    agent = ScriptedAgent(world, tokenizer, seed=0)
    prompts = []
    for question in world.train:
        ids = encode_prompt(template.prompt(question.question), tokenizer)
        agent.plan(ids, question, behaviour)
        prompts.append(ids)
    config = RolloutConfig(k=2, max_turns=2, max_new_tokens=32, max_completion_tokens=256)
    episodes = run_rollout(
        prompts,
        generator=agent,
        tokenizer=tokenizer,
        retriever=demo_world.retriever,
        protocol=template.protocol,
        config=config,
    )
    answers = [
        extract_answer(tokenizer.decode(e.completion_ids), template.protocol) for e in episodes
    ]
    return episodes, answers


def test_scripted_search_answers_every_question_with_the_real_retriever(demo_world):
    world = demo_world.world
    episodes, answers = play(demo_world, "search")
    assert answers == [q.answer for q in world.train]
    assert [e.num_searches for e in episodes] == [len(KINDS[q.kind][1]) for q in world.train]
    # Inserted observations are masked; the agent's own turns are not.
    for episode in episodes:
        assert 0 in episode.env_mask and 1 in episode.env_mask


def test_scripted_flaws(demo_world):
    world = demo_world.world
    episodes, answers = play(demo_world, "guess")
    assert all(e.num_searches == 0 and e.env_mask[-1] == 0 for e in episodes)
    assert all(a is not None for a in answers)

    episodes, answers = play(demo_world, "one_hop")
    two_hop = [i for i, q in enumerate(world.train) if len(q.chain) == 2]
    assert two_hop
    assert [answers[i] for i in two_hop] == [world.train[i].chain[1] for i in two_hop]
    assert all(episodes[i].num_searches == 1 for i in two_hop)

    episodes, _ = play(demo_world, "vague")
    assert all(len(e.queries) == 1 and e.queries[0] in FACTS for e in episodes)
